"""OCSP (RFC 6960) over the gateway's ordinary aiohttp client, for the certificates of a validated path.

Modes (``ocsp`` option): ``off``; ``fail-open`` — a responder that cannot be reached or gives no
usable answer is logged (``trust_ocsp_unavailable``) and the certificate counts as not revoked (CRLs
still apply); ``fail-closed`` — the same is ``revocation-unknown`` and the certificate is refused.
``revoked`` refuses in both modes; a responder's ``unknown`` counts as no usable answer.

Asked: the responder named in each certificate's authorityInformationAccess (leaf and intermediates; the
anchor is trusted by configuration). A certificate without one is not checked by OCSP. A response
counts only if it is signed by the issuing CA or by a responder certificate that CA issued for
OCSPSigning, is about this serial, and is current (thisUpdate/nextUpdate with 5 minutes of skew).
Answers are cached until nextUpdate (at most an hour; "revoked" for good).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Literal

import aiohttp
import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

from gateway.trust.path import TrustError

log = structlog.get_logger(__name__)

Mode = Literal["off", "fail-open", "fail-closed"]
MODES: tuple[str, ...] = ("off", "fail-open", "fail-closed")
TIMEOUT = 10.0
SKEW = dt.timedelta(minutes=5)
MAX_CACHE = dt.timedelta(hours=1)
MAX_RESPONSE_BYTES = 64 * 1024


class _NoAnswer(Exception):
    """The responder gave no usable answer (unreachable, error status, bad signature, stale)."""


def responder_url(cert: x509.Certificate) -> str | None:
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return None
    for access in aia:
        if access.access_method == AuthorityInformationAccessOID.OCSP and isinstance(
            access.access_location, x509.UniformResourceIdentifier
        ):
            url = access.access_location.value
            if url.startswith(("http://", "https://")):  # OCSP is plain HTTP by design (RFC 6960 A.1)
                return url
    return None


class OcspChecker:
    def __init__(self, mode: str, *, timeout: float = TIMEOUT) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown OCSP mode {mode!r}")
        self.mode = mode
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._cache: dict[tuple[bytes, int], tuple[str, dt.datetime]] = {}

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def check(self, chain: Sequence[x509.Certificate], now: dt.datetime | None = None) -> None:
        """Raise TrustError for a revoked certificate of ``chain`` (leaf first, anchor last), or, in
        fail-closed mode, for one whose status could not be learnt."""
        if not self.enabled:
            return
        when = now or dt.datetime.now(dt.UTC)
        for index, cert in enumerate(chain[:-1]):
            url = responder_url(cert)
            if url is None:
                continue
            position = "leaf" if index == 0 else "intermediate"
            try:
                status = await self._status(url, cert, chain[index + 1], when)
            except _NoAnswer as exc:
                log.warning("trust_ocsp_unavailable", mode=self.mode, position=position, reason=str(exc))
                if self.mode == "fail-closed":
                    raise TrustError(
                        "revocation-unknown", f"OCSP gave no usable answer for the {position} certificate ({exc})"
                    ) from None
                continue
            if status == "revoked":
                raise TrustError("revoked", f"the OCSP responder reports the {position} certificate as revoked")

    async def _status(self, url: str, cert: x509.Certificate, issuer: x509.Certificate, now: dt.datetime) -> str:
        key = (issuer.fingerprint(hashes.SHA256()), cert.serial_number)
        cached = self._cache.get(key)
        if cached is not None and cached[1] > now:
            return cached[0]
        # the CertID hash: SHA-1 is what RFC 5019 responders must understand; it names, it does not protect
        request = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build()  # noqa: S303
        body = await self._post(url, request.public_bytes(serialization.Encoding.DER))
        try:
            response = ocsp.load_der_ocsp_response(body)
        except ValueError:
            raise _NoAnswer("the response is not DER OCSP") from None
        if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
            raise _NoAnswer(f"responder status {response.response_status.name}")
        if response.serial_number != cert.serial_number:
            raise _NoAnswer("the response is about another certificate")
        _verify_signature(response, issuer)
        if response.this_update_utc > now + SKEW or (
            response.next_update_utc is not None and response.next_update_utc < now - SKEW
        ):
            raise _NoAnswer("the response is not current")
        if response.certificate_status == ocsp.OCSPCertStatus.UNKNOWN:
            raise _NoAnswer("the responder does not know the certificate")
        status = "revoked" if response.certificate_status == ocsp.OCSPCertStatus.REVOKED else "good"
        until = dt.datetime.max.replace(tzinfo=dt.UTC) if status == "revoked" else now + MAX_CACHE
        if status == "good" and response.next_update_utc is not None:
            until = min(until, response.next_update_utc)
        self._cache[key] = (status, until)
        return status

    async def _post(self, url: str, der: bytes) -> bytes:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        try:
            async with self._session.post(
                url, data=der, headers={"Content-Type": "application/ocsp-request"}, allow_redirects=False
            ) as resp:
                if resp.status != 200:
                    raise _NoAnswer(f"HTTP {resp.status}")
                data = await resp.content.read(MAX_RESPONSE_BYTES + 1)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _NoAnswer(f"unreachable ({type(exc).__name__})") from None
        if len(data) > MAX_RESPONSE_BYTES:
            raise _NoAnswer("response too large")
        return data


def _verify_signature(response: ocsp.OCSPResponse, issuer: x509.Certificate) -> None:
    signer = issuer
    if response.responder_name != issuer.subject and response.responder_key_hash != _key_hash(issuer):
        delegated = [c for c in response.certificates if _is_delegated_responder(c, issuer)]
        if not delegated:
            raise _NoAnswer("the response is not signed by the issuing CA or its OCSP responder")
        signer = delegated[0]
    key = signer.public_key()
    algorithm = response.signature_hash_algorithm
    try:
        if isinstance(key, rsa.RSAPublicKey) and algorithm is not None:
            key.verify(response.signature, response.tbs_response_bytes, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey) and algorithm is not None:
            key.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(algorithm))
        else:
            raise _NoAnswer("unsupported responder key or signature algorithm")
    except InvalidSignature:
        raise _NoAnswer("the response signature does not verify") from None


def _key_hash(cert: x509.Certificate) -> bytes:
    return x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest


def _is_delegated_responder(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    return ExtendedKeyUsageOID.OCSP_SIGNING in eku
