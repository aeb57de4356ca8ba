"""Test PKI helpers: real X.509 chains (root CA -> intermediate -> leaf) built with ``cryptography``."""

from __future__ import annotations

import datetime as dt
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID

from gateway.fitconnect.keys import jwk_from_public_key, x5c_entry

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def name(cn: str, org: str = "Test-Verwaltungs-PKI") -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)])


def certificate(
    *,
    subject: x509.Name,
    subject_key: RSAPublicKey,
    issuer: x509.Name,
    issuer_key: RSAPrivateKey,
    ca: bool,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    key_usage: str | None = None,
    pss: bool = False,
    path_length: int | None = None,
    name_constraints: x509.NameConstraints | None = None,
    san: list[x509.GeneralName] | None = None,
    ocsp_url: str | None = None,
    serial: int | None = None,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(subject_key)
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(not_before or NOW - dt.timedelta(days=1))
        .not_valid_after(not_after or NOW + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True)
    )
    if name_constraints is not None:
        builder = builder.add_extension(name_constraints, critical=True)
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    if ocsp_url is not None:
        access = x509.AccessDescription(AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url))
        builder = builder.add_extension(x509.AuthorityInformationAccess([access]), critical=False)

    usage = key_usage or ("ca" if ca else None)
    if usage is not None:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=usage == "signing",
                content_commitment=False,
                key_encipherment=usage == "encryption",
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=usage == "ca",
                crl_sign=usage == "ca",
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if pss:
        pad = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        return builder.sign(issuer_key, hashes.SHA256(), rsa_padding=pad)
    return builder.sign(issuer_key, hashes.SHA256())


def jwk_with_chain(
    key: RSAPublicKey, chain: list[x509.Certificate], *, purpose: str = "encryption", kid: str = "test-kid-0001"
) -> dict[str, Any]:
    alg, ops = ("RSA-OAEP-256", ["wrapKey"]) if purpose == "encryption" else ("PS512", ["verify"])
    return jwk_from_public_key(key, kid=kid, alg=alg, key_ops=ops, x5c=[x5c_entry(c) for c in chain])


def crl(
    issuer: x509.Certificate,
    issuer_key: RSAPrivateKey,
    revoked: list[x509.Certificate],
    *,
    next_update: dt.datetime | None = None,
) -> x509.CertificateRevocationList:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(NOW - dt.timedelta(hours=1))
        .next_update(next_update or NOW + dt.timedelta(days=7))
    )
    for cert in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(NOW - dt.timedelta(minutes=30))
            .build()
        )
    return builder.sign(issuer_key, hashes.SHA256())
