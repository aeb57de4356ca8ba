"""The hostile XML corpus through HTTPS: each case gets its precise 4xx, nothing is fetched or expanded,
and the gateway stays healthy (healthz, then a valid message) afterwards."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from loopback_server import Loopback

from gateway.model import MessageState

from .conftest import Gateway, antrag

pytestmark = pytest.mark.asyncio(loop_scope="session")

PORTAL = "/xoev/portal/messages"


async def refused(gateway: Gateway, data: bytes, status: int = 400) -> dict[str, object]:
    code, body, headers = await gateway.post(PORTAL, data, sender="portal-a")
    assert code == status, body
    assert headers["Content-Type"].startswith("application/problem+json")
    return body


async def test_xxe_local_file(gateway: Gateway, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-4711")
    doc = f'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file://{secret}">]><r>&x;</r>'.encode()
    body = await refused(gateway, doc)
    assert str(body["type"]).endswith("/xml-rejected")
    assert (body["code"], body["line"]) == ("doctype", 1)
    assert "TOP-SECRET" not in str(body)


async def test_xxe_network_never_fetched(gateway: Gateway, loopback: Loopback) -> None:
    doc = f'<!DOCTYPE r [<!ENTITY x SYSTEM "{loopback.url}/xxe">]>\n<r>&x;</r>'.encode()
    body = await refused(gateway, doc)
    assert body["code"] == "doctype"
    assert loopback.hits == []


async def test_billion_laughs(gateway: Gateway) -> None:
    entities = ['<!ENTITY lol0 "lol">'] + [f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10)]
    doc = f"<?xml version='1.0'?>\n<!DOCTYPE lolz [\n{''.join(entities)}\n]>\n<lolz>&lol9;</lolz>".encode()
    body = await refused(gateway, doc)
    assert (body["code"], body["line"]) == ("doctype", 2)


async def test_external_dtd_never_fetched(gateway: Gateway, loopback: Loopback) -> None:
    doc = f'<?xml version="1.0"?>\n<!DOCTYPE r SYSTEM "{loopback.url}/evil.dtd">\n<r>&leak;</r>'.encode()
    body = await refused(gateway, doc)
    assert (body["code"], body["line"]) == ("doctype", 2)
    assert loopback.hits == []


async def test_parameter_entities_never_fetched(gateway: Gateway, loopback: Loopback) -> None:
    doc = (
        f'<!DOCTYPE r [<!ENTITY % remote SYSTEM "{loopback.url}/pe.dtd"> %remote; '
        "<!ENTITY % inner \"<!ENTITY leak 'x'>\"> %inner;]><r>&leak;</r>"
    ).encode()
    assert (await refused(gateway, doc))["code"] == "doctype"
    assert loopback.hits == []


async def test_undeclared_entity(gateway: Gateway) -> None:
    body = await refused(gateway, b"<r>\n  a&x;b</r>")
    assert (body["code"], body["line"]) == ("entity", 2)


async def test_schema_location_hint_never_fetched(gateway: Gateway, loopback: Loopback) -> None:
    hint = (
        ' xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
        f' xsi:schemaLocation="urn:example:gateway:antrag:1 {loopback.url}/antrag.xsd"'
    )
    status, body, _ = await gateway.post(PORTAL, antrag(extra_root_attributes=hint), sender="portal-a")
    assert status == 202, body
    # the invalid variant takes the xmlschema error path: still nothing fetched
    status, body, _ = await gateway.post(PORTAL, antrag(extra_root_attributes=hint, betrag="zwoelf"), sender="portal-a")
    assert status == 422
    assert body["issues"][0]["path"].endswith("/betrag")
    assert loopback.hits == []


async def test_deep_nesting(gateway: Gateway) -> None:
    body = await refused(gateway, b"<a>" * 2000 + b"</a>" * 2000)
    assert body["code"] == "too-deep"
    body = await refused(gateway, b"<a>" * 65 + b"</a>" * 65)  # [xoev] max_depth = 64
    assert body["code"] == "too-deep"


async def test_huge_attribute(gateway: Gateway) -> None:
    body = await refused(gateway, b'<r a="' + b"A" * 10_000 + b'"/>')  # [xoev] max_attribute_chars = 4096
    assert (body["code"], body["line"]) == ("attribute-too-large", 1)


async def test_invalid_utf8(gateway: Gateway) -> None:
    body = await refused(gateway, b'<?xml version="1.0" encoding="UTF-8"?>\n<r>caf\xe9</r>')
    assert (body["code"], body["line"]) == ("encoding", 2)


async def test_other_declared_encoding(gateway: Gateway) -> None:
    body = await refused(gateway, b'<?xml version="1.0" encoding="ISO-8859-1"?><r>caf\xe9</r>')
    assert body["code"] == "encoding"


async def test_not_well_formed(gateway: Gateway) -> None:
    body = await refused(gateway, b"<r>\n<a></r>")
    assert (body["code"], body["line"]) == ("syntax", 2)


async def test_empty_body(gateway: Gateway) -> None:
    assert (await refused(gateway, b""))["code"] == "syntax"


async def test_oversize_with_content_length(gateway: Gateway) -> None:
    big = io.BytesIO(b"<r>" + b"x" * 1_100_000 + b"</r>")  # source max_body_bytes = 1_000_000
    code, body, _ = await gateway.post(PORTAL, big, sender="portal-a")
    assert code == 413
    assert str(body["type"]).endswith("/payload-too-large")


async def test_oversize_chunked(gateway: Gateway) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"<r>"
        for _ in range(20):
            yield b"x" * 64_000
        yield b"</r>"

    status, body, _ = await gateway.post(PORTAL, chunks(), sender="portal-a")
    assert status == 413
    assert str(body["type"]).endswith("/payload-too-large")


async def test_oversize_refused_before_the_body_with_expect_continue(gateway: Gateway) -> None:
    big = io.BytesIO(b"<r>" + b"x" * 1_100_000 + b"</r>")
    status, body, _ = await gateway.post(PORTAL, big, sender="portal-a", expect100=True)
    assert status == 413
    assert str(body["type"]).endswith("/payload-too-large")


async def test_still_healthy_afterwards(gateway: Gateway) -> None:
    async with gateway.session().get(gateway.base_url + "/healthz") as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ok"}
    async with gateway.session().get(gateway.base_url + "/readyz") as resp:
        checks = (await resp.json())["checks"]
        assert (checks["source:portal"], checks["source:behoerden"]) == ("ok", "ok")
    status, body, _ = await gateway.post(PORTAL, antrag(), sender="portal-a")
    assert status == 202
    assert (await gateway.settled(body["id"])).envelope.state is MessageState.ACKNOWLEDGED


async def test_plain_http_is_not_served_on_the_tls_port(gateway: Gateway) -> None:
    url = gateway.base_url.replace("https://", "http://") + "/healthz"
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            async with session.get(url) as resp:
                await resp.read()
