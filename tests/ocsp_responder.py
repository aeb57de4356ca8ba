"""A real OCSP responder on 127.0.0.1 (aiohttp + cryptography's OCSP builder), for revocation tests.

It answers for one issuing CA: ``statuses`` maps a serial to "good" / "revoked" / "unknown"; serials
not in it are "unknown". ``hits`` counts the requests, so a test can see the cache work.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509 import ocsp


@dataclass
class Responder:
    issuer: x509.Certificate
    issuer_key: CertificateIssuerPrivateKeyTypes
    certs: dict[int, x509.Certificate] = field(default_factory=dict)  # serial -> certificate it answers for
    statuses: dict[int, str] = field(default_factory=dict)
    hits: list[int] = field(default_factory=list)
    url: str = ""

    def add(self, cert: x509.Certificate, status: str = "good") -> None:
        self.certs[cert.serial_number] = cert
        self.statuses[cert.serial_number] = status

    async def handle(self, request: web.Request) -> web.Response:
        req = ocsp.load_der_ocsp_request(await request.read())
        self.hits.append(req.serial_number)
        now = dt.datetime.now(dt.UTC)
        cert = self.certs.get(req.serial_number)
        status = self.statuses.get(req.serial_number, "unknown")
        if cert is None:
            body = ocsp.OCSPResponseBuilder.build_unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED)
            return web.Response(
                body=body.public_bytes(serialization.Encoding.DER), content_type="application/ocsp-response"
            )
        cert_status = {
            "good": ocsp.OCSPCertStatus.GOOD,
            "revoked": ocsp.OCSPCertStatus.REVOKED,
            "unknown": ocsp.OCSPCertStatus.UNKNOWN,
        }[status]
        builder = (
            ocsp.OCSPResponseBuilder()
            .add_response(
                cert=cert,
                issuer=self.issuer,
                algorithm=hashes.SHA1(),
                cert_status=cert_status,
                this_update=now - dt.timedelta(minutes=1),
                next_update=now + dt.timedelta(hours=1),
                revocation_time=now - dt.timedelta(minutes=10) if status == "revoked" else None,
                revocation_reason=x509.ReasonFlags.key_compromise if status == "revoked" else None,
            )
            .responder_id(ocsp.OCSPResponderEncoding.HASH, self.issuer)
        )
        response = builder.sign(self.issuer_key, hashes.SHA256())
        return web.Response(
            body=response.public_bytes(serialization.Encoding.DER), content_type="application/ocsp-response"
        )


@asynccontextmanager
async def ocsp_responder(
    issuer: x509.Certificate, issuer_key: CertificateIssuerPrivateKeyTypes
) -> AsyncIterator[Responder]:
    responder = Responder(issuer, issuer_key)
    app = web.Application()
    app.router.add_post("/ocsp", responder.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    responder.url = f"http://127.0.0.1:{port}/ocsp"
    try:
        yield responder
    finally:
        await runner.cleanup()
