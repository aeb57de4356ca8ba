"""Problem types of the xoev-http endpoint (``application/problem+json``; catalogue in docs/xoev.md).

Every refusal names a type from this catalogue; details are technical and never quote the document
(schema issues are redacted, see :mod:`gateway.sources.xoev_http.redact`).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.http.problem import problem_response

UNAUTHORIZED = "unauthorized"  # 401: no, wrong or incomplete credentials
SENDER_NOT_ALLOWED = "sender-not-allowed"  # 403: a sender of another xoev-http endpoint of this gateway
AUTHOR_NOT_ALLOWED = "author-not-allowed"  # 403: the header's author is not one the sender may send for
MESSAGE_NOT_FOUND = "message-not-found"  # 404: status of a message this sender did not send (or none)
MESSAGE_UUID_CONFLICT = "message-uuid-conflict"  # 409: message UUID already received with other content
PAYLOAD_TOO_LARGE = "payload-too-large"  # 413: body (or the XML message) above the limit
UNSUPPORTED_MEDIA_TYPE = "unsupported-media-type"  # 415: not XML / multipart, or a non-XML message part
REQUEST_TIMEOUT = "request-timeout"  # 408: the body did not arrive within [http] body_timeout
TOO_MANY_UPLOADS = "too-many-uploads"  # 429: the sender has max_concurrent_uploads requests in progress
MULTIPART_INVALID = "multipart-invalid"  # 400: no/two message parts, nested multipart, bad encoding
TOO_MANY_ATTACHMENTS = "too-many-attachments"  # 400: more attachment parts than max_attachments
XML_REJECTED = "xml-rejected"  # 400: hostile or malformed XML (member "code": XmlRejected.code, "line")
XML_SCHEMA_INVALID = "xml-schema-invalid"  # 422: not valid against its schema (member "issues")
XML_UNKNOWN_MESSAGE = "xml-unknown-message"  # 422: no schema registered for the root element
TEST_MESSAGE_REFUSED = "test-message-refused"  # 422: test marker, and accept_test_messages = false
VALIDATION_UNAVAILABLE = "validation-unavailable"  # 503: the validator is not running / a worker died
REVOCATION_UNAVAILABLE = "revocation-unavailable"  # 503: ocsp = fail-closed and the responder gave no answer
DRAINING = "draining"  # 503: the gateway is shutting down
STORE_UNAVAILABLE = "store-unavailable"  # 503: the message could not be stored durably (disk full, database down)


class Refusal(Exception):
    """Answer the request with a problem response (raised anywhere below the handler)."""

    def __init__(
        self,
        status: int,
        type_: str,
        title: str,
        detail: str = "",
        *,
        headers: dict[str, str] | None = None,
        close: bool = False,
        **extra: Any,
    ) -> None:
        super().__init__(f"{status} {type_}: {detail or title}")
        self.status = status
        self.type = type_
        self.title = title
        self.detail = detail
        self.headers = headers
        self.close = close  # close the connection after the answer (the rest of the body is not read)
        self.extra = extra

    def response(self) -> web.Response:
        response = problem_response(self.status, self.type, self.title, self.detail, headers=self.headers, **self.extra)
        if self.close:
            response.force_close()
        return response
