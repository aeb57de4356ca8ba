"""XMLDSig: verify per policy (valid, tampered, wrapped, untrusted, missing), sign, interoperate with xmlsec1."""

from __future__ import annotations

import copy
import datetime
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from lxml import etree
from signxml import methods
from signxml.signer import XMLSigner
from signxml.verifier import XMLVerifier

from gateway.xoev.parsing import XmlRejected
from gateway.xoev.signatures import DS_NS, sign_xml, verify_policy

DOC = b"""<?xml version="1.0" encoding="UTF-8"?>
<z:antrag xmlns:z="urn:example:antrag" Id="msg-1">
  <z:betrag>10.00</z:betrag>
  <z:empfaenger>Gemeinde Musterstadt</z:empfaenger>
</z:antrag>
"""


@dataclass(frozen=True)
class Identity:
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def make_identity(cn: str, *, days: int = 30, ec_key: bool = False) -> Identity:
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = (
        ec.generate_private_key(ec.SECP256R1()) if ec_key else rsa.generate_private_key(65537, 2048)
    )
    name = x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test"), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=2))
        .not_valid_after(now + datetime.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    return Identity(key, cert)


@pytest.fixture(scope="session")
def municipality() -> Identity:
    return make_identity("Gemeinde Musterstadt")


@pytest.fixture(scope="session")
def stranger() -> Identity:
    return make_identity("Unbekannt")


@pytest.fixture(scope="session")
def signed(municipality: Identity) -> bytes:
    return sign_xml(DOC, municipality.key, municipality.cert)


def test_valid_signature(signed: bytes, municipality: Identity) -> None:
    verdict = verify_policy(signed, "required", [municipality.cert])
    assert verdict.status == "valid"
    assert verdict.accepted
    assert verdict.signer == "CN=Gemeinde Musterstadt,O=Test"
    # trusted certificates may also be given as PEM
    assert verify_policy(signed, "optional", [municipality.cert_pem]).status == "valid"


def test_signature_is_enveloped_over_the_whole_document(signed: bytes) -> None:
    root = etree.fromstring(signed)
    (signature,) = root.findall(f"{{{DS_NS}}}Signature")
    (reference,) = signature.findall(f".//{{{DS_NS}}}Reference")
    assert reference.get("URI") == ""
    assert root[-1] is signature


def test_tampered_content(signed: bytes, municipality: Identity) -> None:
    tampered = signed.replace(b"10.00", b"99999.00")
    verdict = verify_policy(tampered, "required", [municipality.cert])
    assert (verdict.status, verdict.code) == ("invalid", "tampered")
    assert not verdict.accepted


def test_tampered_signature_value(signed: bytes, municipality: Identity) -> None:
    root = etree.fromstring(signed)
    value = root.find(f".//{{{DS_NS}}}SignatureValue")
    assert value is not None
    value.text = (
        "A" + (value.text or "")[1:] if not (value.text or "").startswith("A") else "B" + (value.text or "")[1:]
    )
    verdict = verify_policy(etree.tostring(root), "required", [municipality.cert])
    assert (verdict.status, verdict.code) == ("invalid", "bad-signature")


def signed_by_id(identity: Identity) -> bytes:
    """Signed the way many XMLDSig producers do it: Reference URI="#<Id of the root>"."""
    root = etree.fromstring(DOC)
    signer = XMLSigner(
        method=methods.enveloped,
        signature_algorithm="rsa-sha256",
        digest_algorithm="sha256",
        c14n_algorithm="http://www.w3.org/2001/10/xml-exc-c14n#",
    )
    out = signer.sign(root, key=identity.key, cert=[identity.cert], reference_uri="#msg-1")
    return etree.tostring(out)


def test_reference_to_the_root_id_is_accepted(municipality: Identity) -> None:
    verdict = verify_policy(signed_by_id(municipality), "required", [municipality.cert])
    assert verdict.status == "valid"


def test_classic_signature_wrapping_attack(municipality: Identity) -> None:
    """The signed original hides in ds:Object; the root the application would process is the forgery."""
    root = etree.fromstring(signed_by_id(municipality))
    signature = root.find(f"{{{DS_NS}}}Signature")
    assert signature is not None
    original = copy.deepcopy(root)
    copied_signature = original.find(f"{{{DS_NS}}}Signature")
    assert copied_signature is not None
    original.remove(copied_signature)
    wrapper = etree.SubElement(signature, f"{{{DS_NS}}}Object")
    wrapper.append(original)  # still carries Id="msg-1": the reference now resolves to this copy
    root.set("Id", "forged")
    betrag = root.find("{urn:example:antrag}betrag")
    assert betrag is not None
    betrag.text = "1000000.00"
    attack = etree.tostring(root)

    # A naive verifier is fooled: the signature is cryptographically fine ...
    naive = XMLVerifier().verify(attack, x509_cert=municipality.cert)
    assert not isinstance(naive, list)
    assert naive.signed_xml is not None
    assert b"10.00" in etree.tostring(naive.signed_xml)
    # ... but the gateway sees that the signed element is not the root it would process.
    verdict = verify_policy(attack, "required", [municipality.cert])
    assert (verdict.status, verdict.code) == ("invalid", "reference-not-root")
    assert not verdict.accepted


def test_wrapping_with_duplicate_ids(municipality: Identity) -> None:
    root = etree.fromstring(signed_by_id(municipality))
    signature = root.find(f"{{{DS_NS}}}Signature")
    assert signature is not None
    original = copy.deepcopy(root)
    copied_signature = original.find(f"{{{DS_NS}}}Signature")
    assert copied_signature is not None
    original.remove(copied_signature)
    etree.SubElement(signature, f"{{{DS_NS}}}Object").append(original)
    betrag = root.find("{urn:example:antrag}betrag")
    assert betrag is not None
    betrag.text = "1000000.00"  # the root keeps Id="msg-1" too
    verdict = verify_policy(etree.tostring(root), "required", [municipality.cert])
    assert (verdict.status, verdict.code) == ("invalid", "wrapped")


def test_comment_injected_into_signed_text(signed: bytes, municipality: Identity) -> None:
    """c14n without comments ignores the comment, a naive reader of the text would not: refused."""
    injected = signed.replace(b"Gemeinde Musterstadt</z:empfaenger>", b"Gemeinde <!---->Musterstadt</z:empfaenger>")
    assert injected != signed
    verdict = verify_policy(injected, "required", [municipality.cert])
    assert (verdict.status, verdict.code) == ("invalid", "unsigned-content")


def test_reference_to_another_element(municipality: Identity) -> None:
    root = etree.fromstring(DOC)
    betrag = root.find("{urn:example:antrag}betrag")
    assert betrag is not None
    betrag.set("Id", "b1")
    signer = XMLSigner(method=methods.enveloped, signature_algorithm="rsa-sha256", digest_algorithm="sha256")
    out = signer.sign(root, key=municipality.key, cert=[municipality.cert], reference_uri="#b1")
    verdict = verify_policy(etree.tostring(out), "required", [municipality.cert])
    assert (verdict.status, verdict.code) == ("invalid", "reference-not-root")


def test_more_than_one_signature(signed: bytes, municipality: Identity) -> None:
    root = etree.fromstring(signed)
    signature = root.find(f"{{{DS_NS}}}Signature")
    assert signature is not None
    body = root.find("{urn:example:antrag}empfaenger")
    assert body is not None
    body.append(copy.deepcopy(signature))
    verdict = verify_policy(etree.tostring(root), "required", [municipality.cert])
    assert (verdict.status, verdict.code) == ("invalid", "multiple-signatures")


def test_signature_not_a_child_of_the_root(signed: bytes, municipality: Identity) -> None:
    root = etree.fromstring(signed)
    signature = root.find(f"{{{DS_NS}}}Signature")
    assert signature is not None
    body = root.find("{urn:example:antrag}empfaenger")
    assert body is not None
    body.append(signature)
    verdict = verify_policy(etree.tostring(root), "required", [municipality.cert])
    assert (verdict.status, verdict.code) == ("invalid", "not-enveloped")


def test_untrusted_certificate(signed: bytes, stranger: Identity) -> None:
    verdict = verify_policy(signed, "required", [stranger.cert])
    assert (verdict.status, verdict.code) == ("invalid", "untrusted-certificate")
    assert verdict.signer is None


def test_signed_by_a_stranger(stranger: Identity, municipality: Identity) -> None:
    verdict = verify_policy(sign_xml(DOC, stranger.key, stranger.cert), "optional", [municipality.cert])
    assert (verdict.status, verdict.code) == ("invalid", "untrusted-certificate")
    assert not verdict.accepted  # optional does not mean "anything goes" once a signature is present


def test_key_swapped_under_a_trusted_certificate(municipality: Identity, stranger: Identity) -> None:
    """A stranger's signature carrying the trusted certificate in KeyInfo does not verify."""
    forged = sign_xml(DOC, stranger.key, municipality.cert)
    verdict = verify_policy(forged, "required", [municipality.cert])
    assert (verdict.status, verdict.code) == ("invalid", "bad-signature")


def test_expired_certificate() -> None:
    old = make_identity("Abgelaufen", days=-1)
    verdict = verify_policy(sign_xml(DOC, old.key, old.cert), "required", [old.cert])
    assert (verdict.status, verdict.code) == ("invalid", "certificate-expired")


@pytest.mark.parametrize(
    ("policy", "status", "accepted", "code"),
    [("required", "absent", False, "missing"), ("optional", "absent", True, None), ("ignored", "ignored", True, None)],
)
def test_unsigned_document_per_policy(
    municipality: Identity, policy: str, status: str, accepted: bool, code: str | None
) -> None:
    verdict = verify_policy(DOC, policy, [municipality.cert])
    assert (verdict.status, verdict.accepted, verdict.code) == (status, accepted, code)


def test_ignored_policy_does_not_look(signed: bytes, stranger: Identity) -> None:
    verdict = verify_policy(signed.replace(b"10.00", b"1.00"), "ignored", [stranger.cert])
    assert verdict.status == "ignored"
    assert verdict.accepted


def test_unknown_policy(signed: bytes, municipality: Identity) -> None:
    with pytest.raises(ValueError, match="unknown signature policy"):
        verify_policy(signed, "sometimes", [municipality.cert])


def test_hostile_document_is_rejected_by_the_parser(municipality: Identity) -> None:
    with pytest.raises(XmlRejected) as info:
        verify_policy(b'<!DOCTYPE r [<!ENTITY a "b">]><r>&a;</r>', "required", [municipality.cert])
    assert info.value.code == "doctype"


def test_signing_accepts_pem_and_ec_keys(municipality: Identity) -> None:
    pem_signed = sign_xml(DOC, municipality.key_pem, municipality.cert_pem)
    assert verify_policy(pem_signed, "required", [municipality.cert]).status == "valid"
    ec_identity = make_identity("EC", ec_key=True)
    ec_signed = sign_xml(DOC, ec_identity.key, ec_identity.cert)
    assert b"ecdsa-sha256" in ec_signed
    assert verify_policy(ec_signed, "required", [ec_identity.cert]).status == "valid"
    with pytest.raises(ValueError, match="already signed"):
        sign_xml(pem_signed, municipality.key, municipality.cert)


def test_signing_a_real_xoev_message(municipality: Identity, xoev_shared: Path) -> None:
    data = (xoev_shared / "xbeteiligung-1.2/samples/xmlv14/xbeteiligung-test-kommunal.Initiieren.0401.xml").read_bytes()
    signed = sign_xml(data, municipality.key, municipality.cert)
    assert verify_policy(signed, "required", [municipality.cert]).status == "valid"
    assert verify_policy(signed.replace(b"xyz:0002", b"xyz:0666"), "required", [municipality.cert]).code == "tampered"


# -- independent verifier: xmlsec1 (Debian package "xmlsec1") --------------------------------------------


@pytest.fixture(scope="session")
def xmlsec1() -> Callable[..., subprocess.CompletedProcess[bytes]]:
    binary = shutil.which("xmlsec1")
    if binary is None:
        pytest.skip("xmlsec1 is not installed (Debian: apt-get install xmlsec1)")

    def run(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([binary, *args], capture_output=True, timeout=60, check=False)

    return run


def test_xmlsec1_verifies_our_signature(
    signed: bytes, municipality: Identity, tmp_path: Path, xmlsec1: Callable[..., subprocess.CompletedProcess[bytes]]
) -> None:
    (tmp_path / "cert.pem").write_bytes(municipality.cert_pem)
    (tmp_path / "signed.xml").write_bytes(signed)
    (tmp_path / "tampered.xml").write_bytes(signed.replace(b"10.00", b"11.00"))
    ok = xmlsec1("--verify", "--pubkey-cert-pem", str(tmp_path / "cert.pem"), str(tmp_path / "signed.xml"))
    assert ok.returncode == 0, ok.stderr.decode()
    assert b"OK" in ok.stdout + ok.stderr
    bad = xmlsec1("--verify", "--pubkey-cert-pem", str(tmp_path / "cert.pem"), str(tmp_path / "tampered.xml"))
    assert bad.returncode != 0


TEMPLATE = f"""<z:antrag xmlns:z="urn:example:antrag"><z:betrag>10.00</z:betrag>
<ds:Signature xmlns:ds="{DS_NS}"><ds:SignedInfo>
<ds:CanonicalizationMethod Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/>
<ds:SignatureMethod Algorithm="http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"/>
<ds:Reference URI=""><ds:Transforms>
<ds:Transform Algorithm="http://www.w3.org/2000/09/xmldsig#enveloped-signature"/>
<ds:Transform Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/></ds:Transforms>
<ds:DigestMethod Algorithm="http://www.w3.org/2001/04/xmlenc#sha256"/><ds:DigestValue/></ds:Reference>
</ds:SignedInfo><ds:SignatureValue/><ds:KeyInfo><ds:X509Data><ds:X509Certificate/></ds:X509Data></ds:KeyInfo>
</ds:Signature></z:antrag>"""


def test_we_verify_a_signature_made_by_xmlsec1(
    municipality: Identity,
    stranger: Identity,
    tmp_path: Path,
    xmlsec1: Callable[..., subprocess.CompletedProcess[bytes]],
) -> None:
    (tmp_path / "key.pem").write_bytes(municipality.key_pem)
    (tmp_path / "cert.pem").write_bytes(municipality.cert_pem)
    (tmp_path / "template.xml").write_text(TEMPLATE)
    result = xmlsec1(
        "--sign",
        "--privkey-pem",
        f"{tmp_path / 'key.pem'},{tmp_path / 'cert.pem'}",
        "--output",
        str(tmp_path / "out.xml"),
        str(tmp_path / "template.xml"),
    )
    assert result.returncode == 0, result.stderr.decode()
    data = (tmp_path / "out.xml").read_bytes()
    verdict = verify_policy(data, "required", [municipality.cert])
    assert verdict.status == "valid"
    assert verdict.signer == "CN=Gemeinde Musterstadt,O=Test"
    assert verify_policy(data, "required", [stranger.cert]).code == "untrusted-certificate"
