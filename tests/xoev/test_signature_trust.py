"""XMLDSig signing certificates under a CA: path validation, key usage, name constraints, CRLs, OCSP.

A CA in ``trusted_certs`` is a trust anchor (the embedded certificate must chain to it); a non-CA
certificate stays pinned. Keys are EC P-256 (fast); the PKI is generated per run.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID
from ocsp_responder import ocsp_responder

from gateway.trust.crl import CrlDirectory
from gateway.trust.ocsp import OcspChecker
from gateway.trust.path import TrustError
from gateway.xoev.signatures import sign_xml, verify_policy

DOC = b'<?xml version="1.0"?>\n<z:antrag xmlns:z="urn:example:antrag"><z:betrag>1</z:betrag></z:antrag>\n'
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


@dataclass(frozen=True)
class Party:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def issue(
    cn: str,
    issuer: Party | None,
    *,
    ca: bool = False,
    usage: str = "sign",
    days: int = 30,
    path_length: int | None = None,
    constraints: x509.NameConstraints | None = None,
    email: str | None = None,
    ocsp_url: str | None = None,
) -> Party:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=2))
        .not_valid_after(NOW + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=usage == "sign",
                content_commitment=False,
                key_encipherment=usage == "encrypt",
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if constraints is not None:
        builder = builder.add_extension(constraints, critical=True)
    if email is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
    if ocsp_url is not None:
        access = x509.AccessDescription(AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url))
        builder = builder.add_extension(x509.AuthorityInformationAccess([access]), critical=False)
    return Party(key, builder.sign((issuer or Party(key, None)).key, hashes.SHA256()))  # type: ignore[arg-type]


def revocation_list(issuer: Party, revoked: list[Party]) -> bytes:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.cert.subject)
        .last_update(NOW - dt.timedelta(hours=1))
        .next_update(NOW + dt.timedelta(days=1))
    )
    for party in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(party.cert.serial_number).revocation_date(NOW).build()
        )
    return builder.sign(issuer.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def root() -> Party:
    return issue("Land Root CA", None, ca=True)


@pytest.fixture(scope="module")
def inter(root: Party) -> Party:
    return issue("Kommunal-CA", root, ca=True)


def verdict(signer: Party, trusted: list[x509.Certificate], *chain: Party, **kwargs: Any) -> tuple[str, str | None]:
    signed = sign_xml(DOC, signer.key, signer.cert, intermediates=[p.cert for p in chain])
    result = verify_policy(signed, "required", trusted, **kwargs)
    return result.status, result.code


def test_chain_to_a_ca_anchor(root: Party, inter: Party) -> None:
    signer = issue("Gemeinde Musterstadt", inter)
    signed = sign_xml(DOC, signer.key, signer.cert, intermediates=[inter.cert])
    result = verify_policy(signed, "required", [root.cert])
    assert result.status == "valid"
    assert result.chain == (signer.cert, inter.cert, root.cert)
    # without the intermediate in KeyInfo there is no path
    assert verdict(signer, [root.cert]) == ("invalid", "untrusted-certificate")
    # a CA nobody configured
    assert verdict(signer, [issue("Fremde CA", None, ca=True).cert], inter) == ("invalid", "untrusted-certificate")


def test_expired_leaf_and_wrong_key_usage(root: Party, inter: Party) -> None:
    assert verdict(issue("Alt", inter, days=-1), [root.cert], inter) == ("invalid", "certificate-expired")
    assert verdict(issue("Nur Verschluesselung", inter, usage="encrypt"), [root.cert], inter) == (
        "invalid",
        "certificate-key-usage",
    )


def test_path_length_and_name_constraints(root: Party) -> None:
    tight = issue("Kommunal-CA", root, ca=True, path_length=0)
    below = issue("Amts-CA", tight, ca=True)
    assert verdict(issue("Amt", below), [root.cert], below, tight) == ("invalid", "untrusted-certificate")
    limited = issue(
        "Kommunal-CA",
        root,
        ca=True,
        constraints=x509.NameConstraints(
            permitted_subtrees=[x509.RFC822Name("musterstadt.de")], excluded_subtrees=None
        ),
    )
    assert verdict(issue("Amt", limited, email="amt@musterstadt.de"), [root.cert], limited) == ("valid", None)
    assert verdict(issue("Amt", limited, email="amt@evil.example"), [root.cert], limited) == (
        "invalid",
        "untrusted-certificate",
    )


def test_crl_revoked_leaf_intermediate_and_pinned(root: Party, inter: Party, tmp_path: Path) -> None:
    signer, other = issue("Gemeinde A", inter), issue("Gemeinde B", inter)
    crls = CrlDirectory(tmp_path)
    assert verdict(signer, [root.cert], inter, crls=crls) == ("valid", None)
    (tmp_path / "kommunal.pem").write_bytes(revocation_list(inter, [signer]))
    assert verdict(signer, [root.cert], inter, crls=crls) == ("invalid", "certificate-revoked")
    assert verdict(other, [root.cert], inter, crls=crls) == ("valid", None)
    # pinned (not a CA in trusted_certs) but issued by a CA whose CRL lists it: still revoked
    assert verdict(signer, [signer.cert, inter.cert], inter, crls=crls) == ("invalid", "certificate-revoked")
    (tmp_path / "root.pem").write_bytes(revocation_list(root, [inter]))
    assert verdict(other, [root.cert], inter, crls=crls) == ("invalid", "certificate-revoked")


async def test_ocsp_on_the_verdict_chain(root: Party, inter: Party) -> None:
    async with ocsp_responder(inter.cert, inter.key) as responder:
        good, revoked = issue("Gut", inter, ocsp_url=responder.url), issue("Widerrufen", inter, ocsp_url=responder.url)
        responder.add(good.cert, "good")
        responder.add(revoked.cert, "revoked")
        checker = OcspChecker("fail-closed")
        try:
            for party, expected in ((good, None), (revoked, "revoked")):
                signed = sign_xml(DOC, party.key, party.cert, intermediates=[inter.cert])
                result = verify_policy(signed, "required", [root.cert])
                assert result.status == "valid"
                if expected is None:
                    await checker.check(result.chain)
                else:
                    with pytest.raises(TrustError) as info:
                        await checker.check(result.chain)
                    assert info.value.code == expected
        finally:
            await checker.close()
