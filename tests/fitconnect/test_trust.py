"""Certificate path validation, CRL and OCSP revocation and expiry, with a PKI generated per run.

Through :func:`gateway.fitconnect.keys.validate_public_jwk` (the FIT-Connect x5c rules) and
:mod:`gateway.trust` directly; the OCSP responder is real and on loopback (tests/ocsp_responder.py).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from ocsp_responder import ocsp_responder

from gateway.fitconnect.keys import KeyValidationError, validate_public_jwk
from gateway.trust.crl import CrlDirectory
from gateway.trust.expiry import expiry_of
from gateway.trust.ocsp import OcspChecker
from gateway.trust.path import TrustError, signature_usage, verify_path

from .pki import NOW, certificate, crl, jwk_with_chain, name

CaKeys = tuple[RSAPrivateKey, RSAPrivateKey, RSAPrivateKey]


class Pki:
    def __init__(self, ca_keys: CaKeys, leaf_key: RSAPrivateKey) -> None:
        self.root_key, self.inter_key, self.spare_key = ca_keys
        self.leaf_key = leaf_key
        self.root = certificate(
            subject=name("Root"),
            subject_key=self.root_key.public_key(),
            issuer=name("Root"),
            issuer_key=self.root_key,
            ca=True,
        )
        self.inter = self.intermediate()

    def intermediate(self, **kwargs: Any) -> x509.Certificate:
        args: dict[str, Any] = {
            "subject": name("Sub CA"),
            "subject_key": self.inter_key.public_key(),
            "issuer": name("Root"),
            "issuer_key": self.root_key,
            "ca": True,
        }
        return certificate(**{**args, **kwargs})

    def leaf(self, **kwargs: Any) -> x509.Certificate:
        args: dict[str, Any] = {
            "subject": name("Stadt Musterstadt"),
            "subject_key": self.leaf_key.public_key(),
            "issuer": name("Sub CA"),
            "issuer_key": self.inter_key,
            "ca": False,
            "key_usage": "encryption",
        }
        return certificate(**{**args, **kwargs})

    def jwk(self, *chain: x509.Certificate) -> dict[str, Any]:
        return jwk_with_chain(self.leaf_key.public_key(), list(chain))


@pytest.fixture(scope="module")
def pki(ca_keys: CaKeys, second_key: RSAPrivateKey) -> Pki:
    return Pki(ca_keys, second_key)


def refused(jwk: dict[str, Any], pki: Pki, **kwargs: Any) -> KeyValidationError:
    with pytest.raises(KeyValidationError) as info:
        validate_public_jwk(jwk, purpose=kwargs.pop("purpose", "encryption"), trust_anchors=[pki.root], **kwargs)
    return info.value


def test_valid_chain_returns_the_path(pki: Pki) -> None:
    leaf = pki.leaf()
    path = validate_public_jwk(pki.jwk(leaf, pki.inter), purpose="encryption", trust_anchors=[pki.root])
    assert path.chain == (leaf, pki.inter, pki.root)


def test_expired_leaf(pki: Pki) -> None:
    leaf = pki.leaf(not_before=NOW - dt.timedelta(days=30), not_after=NOW - dt.timedelta(days=1))
    assert refused(pki.jwk(leaf, pki.inter), pki).code == "cert-expired"


def test_expired_intermediate(pki: Pki) -> None:
    inter = pki.intermediate(not_before=NOW - dt.timedelta(days=30), not_after=NOW - dt.timedelta(days=1))
    assert refused(pki.jwk(pki.leaf(), inter), pki).code == "cert-expired"


def test_path_length_violation(pki: Pki) -> None:
    # root -> Sub CA (pathLen 0) -> Sub-Sub CA -> leaf: the Sub CA may not issue CAs
    inter = pki.intermediate(path_length=0)
    subsub = certificate(
        subject=name("Sub-Sub CA"),
        subject_key=pki.spare_key.public_key(),
        issuer=name("Sub CA"),
        issuer_key=pki.inter_key,
        ca=True,
    )
    leaf = pki.leaf(issuer=name("Sub-Sub CA"), issuer_key=pki.spare_key)
    error = refused(pki.jwk(leaf, subsub, inter), pki)
    assert error.code == "untrusted"
    assert "path length" in error.message
    # with room for one more CA below it, the same chain is fine
    validate_public_jwk(
        pki.jwk(leaf, subsub, pki.intermediate(path_length=1)), purpose="encryption", trust_anchors=[pki.root]
    )


def test_name_constraint_violation(pki: Pki) -> None:
    permitted = x509.NameConstraints(permitted_subtrees=[x509.DNSName("musterstadt.de")], excluded_subtrees=None)
    inter = pki.intermediate(name_constraints=permitted)
    inside = pki.leaf(san=[x509.DNSName("bauamt.musterstadt.de")])
    outside = pki.leaf(san=[x509.DNSName("bauamt.evil.example")])
    validate_public_jwk(pki.jwk(inside, inter), purpose="encryption", trust_anchors=[pki.root])
    error = refused(pki.jwk(outside, inter), pki)
    assert error.code == "untrusted"
    assert "name constraint" in error.message
    mail = x509.NameConstraints(permitted_subtrees=[x509.RFC822Name("musterstadt.de")], excluded_subtrees=None)
    error = refused(
        pki.jwk(pki.leaf(san=[x509.RFC822Name("a@evil.example")]), pki.intermediate(name_constraints=mail)), pki
    )
    assert error.code == "untrusted"


def test_wrong_key_usage(pki: Pki) -> None:
    # a signing-only leaf as encryption key, and an encryption-only leaf as signing key
    assert refused(pki.jwk(pki.leaf(key_usage="signing"), pki.inter), pki).code == "cert-key-usage"
    assert refused(pki.jwk(pki.leaf(), pki.inter), pki, purpose="signing").code in ("alg", "cert-key-usage")
    with pytest.raises(TrustError) as info:
        verify_path(pki.leaf(), [pki.inter], [pki.root], usage=signature_usage)
    assert info.value.code == "cert-key-usage"
    # an issuer whose keyUsage lacks keyCertSign may not issue
    inter = pki.intermediate(key_usage="signing")
    assert refused(pki.jwk(pki.leaf(), inter), pki).code == "untrusted"
    # a CA certificate is no end-entity key
    ca_leaf = pki.leaf(ca=True, key_usage="ca")
    assert refused(pki.jwk(ca_leaf, pki.inter), pki).code == "untrusted"


# -- CRL ---------------------------------------------------------------------------------------------


def write_crl(directory: Path, file: str, revocation_list: x509.CertificateRevocationList, *, pem: bool = True) -> None:
    encoding = serialization.Encoding.PEM if pem else serialization.Encoding.DER
    (directory / file).write_bytes(revocation_list.public_bytes(encoding))


def test_crl_revoked_leaf_and_intermediate(pki: Pki, tmp_path: Path) -> None:
    leaf, other = pki.leaf(), pki.leaf()
    crls = CrlDirectory(tmp_path)
    jwk = pki.jwk(leaf, pki.inter)
    validate_public_jwk(jwk, purpose="encryption", trust_anchors=[pki.root], crls=crls)  # no CRL: unknown, fine
    write_crl(tmp_path, "sub-ca.crl", crl(pki.inter, pki.inter_key, [leaf]), pem=False)
    error = refused(jwk, pki, crls=crls)
    assert error.code == "revoked"
    assert "leaf" in error.message
    validate_public_jwk(pki.jwk(other, pki.inter), purpose="encryption", trust_anchors=[pki.root], crls=crls)
    # the root revokes the intermediate: every leaf below it is refused
    write_crl(tmp_path, "root.pem", crl(pki.root, pki.root_key, [pki.inter]))
    error = refused(pki.jwk(other, pki.inter), pki, crls=crls)
    assert error.code == "revoked"
    assert "intermediate" in error.message


def test_crl_directory_is_reread_when_it_changes(pki: Pki, tmp_path: Path) -> None:
    leaf = pki.leaf()
    crls = CrlDirectory(tmp_path)
    write_crl(tmp_path, "sub-ca.pem", crl(pki.inter, pki.inter_key, []))
    validate_public_jwk(pki.jwk(leaf, pki.inter), purpose="encryption", trust_anchors=[pki.root], crls=crls)
    generation = crls.generation
    crls.refresh()
    assert crls.generation == generation  # unchanged directory: not re-read
    write_crl(tmp_path, "sub-ca-next.pem", crl(pki.inter, pki.inter_key, [leaf]))
    assert refused(pki.jwk(leaf, pki.inter), pki, crls=crls).code == "revoked"
    assert crls.generation == generation + 1
    (tmp_path / "sub-ca-next.pem").unlink()
    validate_public_jwk(pki.jwk(leaf, pki.inter), purpose="encryption", trust_anchors=[pki.root], crls=crls)


def test_crl_of_someone_else_or_broken_files_do_not_count(pki: Pki, tmp_path: Path) -> None:
    leaf = pki.leaf()
    # same issuer name, signed by another key: ignored, not believed
    write_crl(tmp_path, "forged.pem", crl(pki.inter, pki.spare_key, [leaf]))
    (tmp_path / "garbage.crl").write_bytes(b"\x00not a crl")
    (tmp_path / "empty.pem").write_text("-----BEGIN X509 CRL-----\n-----END X509 CRL-----\n")
    crls = CrlDirectory(tmp_path)
    validate_public_jwk(pki.jwk(leaf, pki.inter), purpose="encryption", trust_anchors=[pki.root], crls=crls)
    assert crls.status(leaf, pki.inter).status == "unknown"


def test_stale_crl_still_revokes(pki: Pki, tmp_path: Path) -> None:
    leaf = pki.leaf()
    write_crl(tmp_path, "old.pem", crl(pki.inter, pki.inter_key, [leaf], next_update=NOW - dt.timedelta(minutes=1)))
    assert refused(pki.jwk(leaf, pki.inter), pki, crls=CrlDirectory(tmp_path)).code == "revoked"


# -- OCSP ----------------------------------------------------------------------------------------------


async def test_ocsp_good_revoked_unknown(pki: Pki) -> None:
    async with ocsp_responder(pki.inter, pki.inter_key) as responder:
        good, revoked, unknown = (pki.leaf(ocsp_url=responder.url) for _ in range(3))
        responder.add(good, "good")
        responder.add(revoked, "revoked")
        responder.add(unknown, "unknown")
        for mode in ("fail-open", "fail-closed"):
            checker = OcspChecker(mode)
            try:
                await checker.check(verify_path(good, [pki.inter], [pki.root]).chain)
                with pytest.raises(TrustError) as info:
                    await checker.check(verify_path(revoked, [pki.inter], [pki.root]).chain)
                assert info.value.code == "revoked"
                unknown_chain = verify_path(unknown, [pki.inter], [pki.root]).chain
                if mode == "fail-closed":
                    with pytest.raises(TrustError) as info:
                        await checker.check(unknown_chain)
                    assert info.value.code == "revocation-unknown"
                else:
                    await checker.check(unknown_chain)
                hits = len(responder.hits)
                await checker.check(verify_path(good, [pki.inter], [pki.root]).chain)
                assert len(responder.hits) == hits  # cached until nextUpdate
            finally:
                await checker.close()


async def test_ocsp_unreachable_fail_open_and_fail_closed(pki: Pki) -> None:
    leaf = pki.leaf(ocsp_url="http://127.0.0.1:9/ocsp")  # the discard port: nothing listens
    chain = verify_path(leaf, [pki.inter], [pki.root]).chain
    checker = OcspChecker("fail-open")
    await checker.check(chain)
    await checker.close()
    checker = OcspChecker("fail-closed")
    with pytest.raises(TrustError) as info:
        await checker.check(chain)
    await checker.close()
    assert info.value.code == "revocation-unknown"
    await OcspChecker("off").check(chain)


async def test_ocsp_answer_signed_by_someone_else_is_no_answer(pki: Pki) -> None:
    async with ocsp_responder(pki.inter, pki.spare_key) as responder:  # right name, wrong key
        leaf = pki.leaf(ocsp_url=responder.url)
        responder.add(leaf, "good")
        checker = OcspChecker("fail-closed")
        with pytest.raises(TrustError) as info:
            await checker.check(verify_path(leaf, [pki.inter], [pki.root]).chain)
        await checker.close()
        assert info.value.code == "revocation-unknown"


# -- expiry -----------------------------------------------------------------------------------------------


def test_expiry_lists_each_certificate_once_soonest_first(pki: Pki) -> None:
    soon = pki.leaf(not_after=NOW + dt.timedelta(days=10))
    report = expiry_of([pki.root, soon, pki.inter, pki.root])
    assert [e.not_after for e in report] == sorted(e.not_after for e in report)
    assert len(report) == 3
    assert report[0].subject == soon.subject.rfc4514_string()
    assert 9 < report[0].days_left(NOW) <= 10
