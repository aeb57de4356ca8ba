"""The webhook adapter: POSTs each message to the Fachverfahren's HTTP endpoint.

Every request carries ``Idempotency-Key`` (the gateway id, identical on every attempt), so the
receiver can drop the duplicates that at-least-once delivery produces.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog

from gateway.adapters.base import Adapter, AdapterContext, Delivery, DeliveryResult
from gateway.options import read_options
from gateway_webhook.body import BlobMismatch, BlobReadError, VerifiedBlobPayload, json_body, multipart_body
from gateway_webhook.options import WebhookAdapterOptions, WebhookOptions
from gateway_webhook.status import MAX_REFERENCE_BODY, classify, reference_from

logger = structlog.get_logger(__name__)

USER_AGENT = "ozg-gateway-webhook/1"


def _os_reason(what: str, exc: OSError) -> str:
    code = errno.errorcode.get(exc.errno, "") if exc.errno is not None else ""
    return f"{what}: {code or type(exc).__name__}"


def _payload_failure(exc: BlobMismatch | BlobReadError) -> DeliveryResult:
    if isinstance(exc, BlobMismatch):
        return DeliveryResult.permanent(str(exc))
    return DeliveryResult.transient(_os_reason("reading the stored blob failed", exc.cause))


@dataclass(slots=True)
class WebhookAdapter:
    name: str
    options: WebhookOptions
    _session: aiohttp.ClientSession | None = field(default=None, repr=False)

    def _client(self) -> aiohttp.ClientSession:
        # Created lazily: a session belongs to the loop it is created in, i.e. the running one.
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self.options.max_connections,
                ssl=self.options.ssl_context if self.options.ssl_context is not None else True,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self.options.timeout, connect=self.options.connect_timeout),
                headers={"User-Agent": USER_AGENT},
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def check(self) -> str | None:
        # A probe request could have side effects on the receiver; readiness is local state only.
        if self._session is not None and self._session.closed:
            return "HTTP session is closed"
        return None

    def _headers(self, delivery: Delivery) -> dict[str, str]:
        headers = dict(self.options.headers)
        headers["Idempotency-Key"] = delivery.idempotency_key
        headers["X-Gateway-Message-Id"] = delivery.envelope.id
        headers["X-Gateway-Attempt"] = str(delivery.attempt)
        if self.options.auth_token is not None:
            headers["Authorization"] = f"Bearer {self.options.auth_token}"
        return headers

    async def deliver(self, delivery: Delivery) -> DeliveryResult:
        log = logger.bind(adapter=self.name, message_id=delivery.envelope.id, attempt=delivery.attempt)
        result = await self._deliver(delivery)
        log.info("webhook_delivery", outcome=str(result.outcome), reason=result.reason)
        return result

    async def _deliver(self, delivery: Delivery) -> DeliveryResult:
        envelope = delivery.envelope
        headers = self._headers(delivery)
        payloads: list[VerifiedBlobPayload] = []
        body: bytes | aiohttp.MultipartWriter
        try:
            if self.options.format == "json":
                total = sum(blob.size for blob in envelope.blobs)
                if total > self.options.max_inline_bytes:
                    return DeliveryResult.permanent(
                        f"message has {total} bytes of parts, more than max_inline_bytes="
                        f"{self.options.max_inline_bytes} allowed for format=json"
                    )
                body = await json_body(envelope, delivery.blobs)
                headers["Content-Type"] = "application/json"
            else:
                body, payloads = multipart_body(envelope, delivery.blobs)
        except (BlobMismatch, BlobReadError) as exc:
            return _payload_failure(exc)
        except (TypeError, ValueError):
            return DeliveryResult.permanent("envelope metadata is not JSON-serialisable")

        try:
            result = await self._post(body, headers)
        except (BlobMismatch, BlobReadError) as exc:
            result = _payload_failure(exc)
        # aiohttp wraps errors raised while the body is written; the payload kept the original.
        for payload in payloads:
            if payload.failure is not None:
                return _payload_failure(payload.failure)
        return result

    async def _post(self, body: bytes | aiohttp.MultipartWriter, headers: dict[str, str]) -> DeliveryResult:
        url = self.options.url
        try:
            async with self._client().post(url, data=body, headers=headers, allow_redirects=False) as response:
                reference_body: bytes | None = None
                if 200 <= response.status < 300:
                    reference_body = await response.content.read(MAX_REFERENCE_BODY + 1)
                    if len(reference_body) > MAX_REFERENCE_BODY:
                        reference_body = None
                return classify(
                    response.status,
                    response.headers.get("Retry-After"),
                    reference_from(
                        reference_body, response.headers.get("Content-Type", ""), response.headers.get("Location")
                    ),
                )
        except TimeoutError:
            return DeliveryResult.transient(f"no complete response within {self.options.timeout:g} s")
        except aiohttp.ClientConnectorCertificateError:
            return DeliveryResult.transient(f"TLS certificate of {url.host} not accepted")
        except aiohttp.ClientConnectorError as exc:
            return DeliveryResult.transient(_os_reason(f"cannot connect to {url.host}:{url.port}", exc))
        except aiohttp.ClientError as exc:
            return DeliveryResult.transient(f"connection to {url.host}:{url.port} failed: {type(exc).__name__}")


def create(ctx: AdapterContext, options: WebhookOptions | Mapping[str, Any]) -> Adapter:
    """The ``AdapterType.create`` hook; no network traffic yet. Raw options (a direct call) are read
    first (``ConfigErrors`` with every problem)."""
    parsed = options
    if not isinstance(parsed, WebhookOptions):
        parsed = read_options(WebhookAdapterOptions, parsed, base_dir=ctx.base_dir, production=ctx.production)  # type: ignore[assignment]
    assert isinstance(parsed, WebhookOptions)
    if parsed.url.scheme == "http" and parsed.auth_token is not None:
        logger.warning("webhook_insecure_token", adapter=ctx.name, reason="bearer token over plain http")
    return WebhookAdapter(ctx.name, parsed)
