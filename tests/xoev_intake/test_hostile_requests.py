"""Hostile requests (not hostile XML): odd types, odd part headers, odd encodings, slow senders.

Each gets its documented problem+json answer (docs/hostile-input.md); none is taken for a store
failure ("retry later") and none leaves anything behind.
"""

from __future__ import annotations

import pytest

from .conftest import Gateway, antrag

pytestmark = pytest.mark.asyncio(loop_scope="session")

PORTAL = "/xoev/portal/messages"
XSI = "http://www.w3.org/2001/XMLSchema-instance"


def _multipart(boundary: str, part_headers: bytes, xml: bytes) -> bytes:
    return (
        f"--{boundary}\r\n".encode()
        + b'Content-Disposition: form-data; name="message"\r\nContent-Type: application/xml\r\n\r\n'
        + xml
        + f"\r\n--{boundary}\r\n".encode()
        + part_headers
        + b"\r\n\r\nattachment bytes"
        + f"\r\n--{boundary}--\r\n".encode()
    )


@pytest.mark.parametrize(
    "xsi_type",
    [
        "f:Unbekannt",  # an unknown type of a foreign namespace
        "a:Unbekannt",  # an unknown type of the message's own namespace
        "xs:NOTATION",  # a built-in that cannot be instantiated
        "nirgends:Typ",  # an undeclared prefix
    ],
)
async def test_unknown_xsi_type_is_a_schema_error_not_unavailable(gateway: Gateway, xsi_type: str) -> None:
    doc = antrag().replace(
        b"<antragsteller>",
        f'<antragsteller xmlns:xsi="{XSI}" xmlns:f="urn:example:fremd" '
        f'xmlns:xs="http://www.w3.org/2001/XMLSchema" xsi:type="{xsi_type}">'.encode(),
    )
    status, body, headers = await gateway.post(PORTAL, doc, sender="portal-a")
    assert status == 422, body
    assert headers["Content-Type"].startswith("application/problem+json")
    assert body["type"].endswith("/xml-schema-invalid")
    assert body["issues"], body
    assert "Retry-After" not in headers


@pytest.mark.parametrize(
    "header",
    [
        b'Content-Disposition: form-data; name="a\x00b"; filename="x.pdf"',
        b'Content-Disposition: form-data; name="anlage"; filename="x\x00.pdf"',
        b'Content-Disposition: form-data; name="anlage"\r\nContent-ID: <a\x01b>',
        b'Content-Disposition: form-data; name="anlage"\r\nX-Odd: \x7f\x1b[31m',
        b'Content-Disposition: form-data; name="anlage"\r\nContent-Type: text/plain\x00; charset=utf-8',
    ],
)
async def test_control_characters_in_part_headers_are_400(gateway: Gateway, header: bytes) -> None:
    boundary = "b0undary"
    body_bytes = _multipart(boundary, header, antrag())
    status, body, headers = await gateway.post(
        PORTAL, body_bytes, sender="portal-a", content_type=f"multipart/form-data; boundary={boundary}"
    )
    assert status == 400, body
    assert headers["Content-Type"].startswith("application/problem+json")
    assert body["type"].endswith("/multipart-invalid")


@pytest.mark.parametrize("encoding", ["compress", "x-unknown", "gzip, identity, zstd", "br;q=1"])
async def test_unsupported_content_encoding_is_problem_json(gateway: Gateway, encoding: str) -> None:
    status, body, headers = await gateway.post(
        PORTAL, antrag(), sender="portal-a", headers={"Content-Encoding": encoding}
    )
    assert status == 415, body
    assert headers["Content-Type"].startswith("application/problem+json")
    assert body["type"].endswith("/unsupported-content-encoding")


async def test_still_accepts_afterwards(gateway: Gateway) -> None:
    status, body, _ = await gateway.post(PORTAL, antrag(), sender="portal-a")
    assert status == 202, body
