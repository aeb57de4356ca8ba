"""XML signatures (XMLDSig, enveloped) for XÖV messages: verify inbound per route policy, sign outbound.

Verification resists signature wrapping: the document is parsed hardened first, it must carry at
most ONE ``ds:Signature``, as a direct child of the root, with exactly one Reference whose URI is
``""`` (the whole document) or ``#<Id of the root>``; and after signxml verified the signature,
the data it reports as signed must be the root element itself (canonicalised, minus the
signature). So the element the gateway processes is the element that was signed.

Trust: a configured trusted certificate that is a CA (basicConstraints cA) is a trust anchor — the
embedded signing certificate must have a valid path to it (``cryptography.x509.verification`` via
:mod:`gateway.trust.path`, with the other embedded certificates as intermediates); any other trusted
certificate is pinned (compared by SHA-256 fingerprint). Either way the signing certificate must be
valid now, allow digitalSignature/nonRepudiation when it has a keyUsage, and not be revoked by a CRL in
``crls``; the signature must verify with its key. OCSP (asynchronous) is left to the caller, on
:attr:`SignatureVerdict.chain`.
"""

from __future__ import annotations

import base64
import binascii
import copy
import dataclasses
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature as InvalidSignatureError
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa
from lxml import etree
from signxml import methods
from signxml.exceptions import (
    InvalidCertificate,
    InvalidDigest,
    InvalidInput,
    InvalidSignature,
    SignXMLException,
)
from signxml.signer import XMLSigner
from signxml.verifier import SignatureConfiguration, XMLVerifier

from gateway.trust.crl import CrlDirectory, check_path
from gateway.trust.path import TrustError, signature_usage, verify_path
from gateway.xoev.parsing import DEFAULT_LIMITS, ParseLimits, parse_xml

DS_NS = "http://www.w3.org/2000/09/xmldsig#"
_ID_ATTRIBUTES = ("Id", "ID", "id", "{http://www.w3.org/XML/1998/namespace}id")
_EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"

Policy = Literal["required", "optional", "ignored"]
POLICIES: tuple[str, ...] = ("required", "optional", "ignored")
Status = Literal["valid", "absent", "ignored", "invalid"]
CertificateInput = x509.Certificate | bytes | str


@dataclass(frozen=True, slots=True)
class SignatureVerdict:
    status: Status
    signer: str | None = None  # RFC 4514 subject of the signing certificate
    policy: str = "optional"
    code: str | None = None  # precise reason when not valid, e.g. "tampered", "untrusted-certificate"
    reason: str | None = None
    chain: tuple[x509.Certificate, ...] = ()  # the validated signing path (leaf first) when valid

    @property
    def accepted(self) -> bool:
        """Whether the route's policy lets this message through."""
        if self.policy == "ignored":
            return True
        if self.status == "valid":
            return True
        return self.status == "absent" and self.policy == "optional"


def verify_policy(
    document_bytes: bytes,
    policy: str,
    trusted_certs: Sequence[CertificateInput],
    *,
    limits: ParseLimits = DEFAULT_LIMITS,
    crls: CrlDirectory | None = None,
    now: dt.datetime | None = None,
) -> SignatureVerdict:
    """Check the enveloped signature of ``document_bytes`` according to ``policy``.

    Raises :class:`gateway.xoev.parsing.XmlRejected` for hostile/malformed XML and ``ValueError``
    for an unknown policy; every signature problem is a verdict with ``code`` and ``reason``.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown signature policy {policy!r} (known: {', '.join(POLICIES)})")
    if policy == "ignored":
        return SignatureVerdict("ignored", policy=policy)
    tree = parse_xml(document_bytes, limits)
    root = tree.getroot()

    def invalid(code: str, reason: str, signer: str | None = None) -> SignatureVerdict:
        return SignatureVerdict("invalid", signer=signer, policy=policy, code=code, reason=reason)

    signatures = root.findall(f".//{{{DS_NS}}}Signature")
    if not signatures:
        if policy == "required":
            return SignatureVerdict("absent", policy=policy, code="missing", reason="the route requires a signature")
        return SignatureVerdict("absent", policy=policy)
    if len(signatures) > 1:
        return invalid("multiple-signatures", f"{len(signatures)} ds:Signature elements; exactly one is accepted")
    signature = signatures[0]
    if signature.getparent() is not root:
        return invalid("not-enveloped", "the ds:Signature must be a direct child of the root element")
    references = signature.findall(f"{{{DS_NS}}}SignedInfo/{{{DS_NS}}}Reference")
    if len(references) != 1:
        return invalid("references", f"{len(references)} references; exactly one (to the root) is accepted")
    uri = references[0].get("URI")
    root_ids = {root.get(a) for a in _ID_ATTRIBUTES} - {None}
    if uri is None or not (uri == "" or (uri.startswith("#") and uri[1:] in root_ids)):
        return invalid("reference-not-root", f"the reference {uri!r} does not point at the root element")
    if uri:
        holders = [e for e in root.iter() if isinstance(e.tag, str) and uri[1:] in {e.get(a) for a in _ID_ATTRIBUTES}]
        if len(holders) > 1:
            return invalid("wrapped", f"the id {uri[1:]!r} occurs {len(holders)} times (signature wrapping)")

    trusted = [_load_cert(c) for c in trusted_certs]
    anchors = [c for c in trusted if _is_ca(c)]
    pins = {c.fingerprint(hashes.SHA256()): c for c in trusted if not _is_ca(c)}
    embedded = _embedded_certificate(signature)
    if embedded is False:
        return invalid("malformed", "the embedded X509Certificate cannot be decoded")
    paths: list[tuple[x509.Certificate, ...]] = []
    if embedded is not None:
        if embedded.fingerprint(hashes.SHA256()) not in pins and not anchors:
            return invalid("untrusted-certificate", "the signing certificate is not trusted for this route")
        try:
            paths = [_signing_path(embedded, signature, anchors, pins, crls, now)]
        except TrustError as exc:
            return invalid(_TRUST_CODES.get(exc.code, "untrusted-certificate"), exc.message)
    else:
        errors: list[TrustError] = []
        for cert in pins.values():  # no certificate in KeyInfo: try every pinned one that is usable now
            try:
                paths.append(_signing_path(cert, signature, anchors, pins, crls, now))
            except TrustError as exc:
                errors.append(exc)
        if not paths and errors:
            return invalid(_TRUST_CODES.get(errors[0].code, "untrusted-certificate"), errors[0].message)
    if not paths:
        return invalid("untrusted-certificate", "no trusted certificate is configured")
    candidates = [path[0] for path in paths]

    failure: SignatureVerdict | None = None
    for cert in candidates:
        signer = cert.subject.rfc4514_string()
        try:
            result: Any = XMLVerifier().verify(
                root,
                x509_cert=cert,
                expect_config=SignatureConfiguration(location="./", expect_references=1),
            )
        except InvalidDigest as exc:
            return invalid("tampered", f"the signed content was changed: {exc}", signer)
        except InvalidCertificate as exc:
            failure = invalid("certificate", f"the signing certificate is not usable: {exc}", signer)
            continue
        except InvalidSignature as exc:
            failure = invalid("bad-signature", f"the signature value does not verify: {exc}", signer)
            continue
        except (InvalidInput, SignXMLException) as exc:
            return invalid("malformed", f"the signature cannot be processed: {exc}", signer)
        if not _signed_is_root(result.signed_xml, root, signature):
            return invalid("wrapped", "the signed data is not the root element that would be processed", signer)
        if _has_unsigned_comments(root, references[0]):
            # "<id>evil<!---->.example</id>": c14n without comments signs "evil.example", a naive
            # reader of the delivered bytes sees "evil"; refuse rather than deliver ambiguity
            return invalid("unsigned-content", "comments inside the message are not covered by the signature", signer)
        return SignatureVerdict("valid", signer=signer, policy=policy, chain=paths[candidates.index(cert)])
    assert failure is not None
    if embedded is None and len(candidates) > 1:
        return invalid("untrusted-certificate", "the signature verifies with none of the trusted certificates")
    return failure


def sign_xml(
    document_bytes: bytes,
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | dsa.DSAPrivateKey | bytes,
    cert: CertificateInput,
    *,
    limits: ParseLimits = DEFAULT_LIMITS,
    intermediates: Sequence[CertificateInput] = (),
) -> bytes:
    """Add an enveloped signature (RSA-SHA256 or ECDSA-SHA256, SHA-256 digest, exclusive c14n).

    The reference covers the whole document (``URI=""``).

    The ``ds:Signature`` is appended as the last child of the root (the message schema must allow it
    there). ``key`` is a private key object or PEM bytes; ``cert`` the matching certificate.
    """
    tree = parse_xml(document_bytes, limits)
    if tree.getroot().find(f".//{{{DS_NS}}}Signature") is not None:
        raise ValueError("the document is already signed")
    if isinstance(key, bytes):
        loaded = serialization.load_pem_private_key(key, password=None)
        if not isinstance(loaded, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | dsa.DSAPrivateKey):
            raise ValueError(f"unsupported signing key type {type(loaded).__name__}")
        key = loaded
    certificate = _load_cert(cert)
    signer = _WholeDocumentSigner(
        method=methods.enveloped,
        signature_algorithm=_signature_algorithm(key),
        digest_algorithm="sha256",
        c14n_algorithm=_EXC_C14N,
    )
    chain = [certificate, *(_load_cert(c) for c in intermediates)]  # KeyInfo: leaf first
    signed = signer.sign(tree.getroot(), key=key, cert=chain)
    out: bytes = etree.tostring(signed, xml_declaration=True, encoding="UTF-8")
    return out


class _WholeDocumentSigner(XMLSigner):
    """signxml references a root that has an ``Id`` as ``#Id``; verifiers then need to be told
    which attribute is an ID (xmlsec1 ``--id-attr``). ``URI=""`` needs nothing and covers the same
    element, so every outbound signature uses it."""

    def _unpack(self, data: Any, references: Any) -> Any:
        sig_root, doc_root, c14n_inputs, refs = super()._unpack(data, references)
        if references is None:
            refs = [dataclasses.replace(ref, URI="") for ref in refs]
        return sig_root, doc_root, c14n_inputs, refs


def _signature_algorithm(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return "ecdsa-sha256"
    if isinstance(key, dsa.DSAPrivateKey):
        return "dsa-sha256"
    return "rsa-sha256"


# gateway.trust codes -> verdict codes (docs/xoev.md, "XML signatures")
_TRUST_CODES = {
    "cert-expired": "certificate-expired",
    "cert-not-yet-valid": "certificate-not-yet-valid",
    "cert-key-usage": "certificate-key-usage",
    "revoked": "certificate-revoked",
    "untrusted": "untrusted-certificate",
}


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _signing_path(
    cert: x509.Certificate,
    signature: etree._Element,
    anchors: Sequence[x509.Certificate],
    pins: dict[bytes, x509.Certificate],
    crls: CrlDirectory | None,
    now: dt.datetime | None,
) -> tuple[x509.Certificate, ...]:
    """The validated path of the signing certificate (raise TrustError): to a CA anchor when one
    issued it, else the pinned certificate as its own anchor; CRLs checked on the path either way."""
    extras = [c for c in _embedded_certificates(signature) if c != cert]
    if cert.fingerprint(hashes.SHA256()) in pins:
        try:
            path = verify_path(cert, extras, anchors, usage=signature_usage, now=now).chain if anchors else ()
        except TrustError:
            path = ()
        if not path:  # pinned: trusted as itself, still valid now and fit for signing
            path = verify_path(cert, [], [cert], usage=signature_usage, now=now).chain
            issuer = next((c for c in (*anchors, *extras) if _issued(cert, c)), None)
            if crls is not None and issuer is not None:
                check_path((cert, issuer), crls, now)
                return path
    else:
        path = verify_path(cert, extras, anchors, usage=signature_usage, now=now).chain
    if crls is not None:
        check_path(path, crls, now)
    return path


def _issued(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject or cert == issuer:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignatureError):
        return False
    return True


def _embedded_certificates(signature: etree._Element) -> list[x509.Certificate]:
    out = []
    for node in signature.findall(f"{{{DS_NS}}}KeyInfo/{{{DS_NS}}}X509Data/{{{DS_NS}}}X509Certificate")[:8]:
        try:
            out.append(
                x509.load_der_x509_certificate(base64.b64decode("".join((node.text or "").split()), validate=True))
            )
        except (ValueError, binascii.Error):
            continue
    return out


def _load_cert(cert: CertificateInput) -> x509.Certificate:
    if isinstance(cert, x509.Certificate):
        return cert
    data = cert.encode() if isinstance(cert, str) else cert
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def _embedded_certificate(signature: etree._Element) -> x509.Certificate | Literal[False] | None:
    """The first embedded X509Certificate; None if there is none, False if it is undecodable."""
    node = signature.find(f"{{{DS_NS}}}KeyInfo/{{{DS_NS}}}X509Data/{{{DS_NS}}}X509Certificate")
    if node is None or not (node.text or "").strip():
        return None
    try:
        return x509.load_der_x509_certificate(base64.b64decode("".join((node.text or "").split()), validate=True))
    except (ValueError, binascii.Error):
        return False


def _signed_is_root(signed_xml: etree._Element | None, root: etree._Element, signature: etree._Element) -> bool:
    """Does signxml's 'what was signed' equal the root element minus its enveloped signature?"""
    if signed_xml is None:
        return False
    expected = copy.deepcopy(root)  # the caller's tree stays untouched
    for sig in expected.findall(f"{{{DS_NS}}}Signature"):
        expected.remove(sig)
    return _c14n(signed_xml) == _c14n(expected)


def _has_unsigned_comments(root: etree._Element, reference: etree._Element) -> bool:
    algorithms = [t.get("Algorithm") or "" for t in reference.iter(f"{{{DS_NS}}}Transform")]
    if any(a.endswith("#WithComments") for a in algorithms):
        return False
    return any(isinstance(node, etree._Comment) for node in root.iter(etree.Comment))


def _c14n(elem: etree._Element) -> bytes:
    return etree.tostring(elem, method="c14n", exclusive=True, with_comments=False)
