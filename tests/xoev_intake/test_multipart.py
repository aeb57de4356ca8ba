"""Multipart: one XML message part plus attachments (streamed to the blob store, hashes in the delivered
manifest), the decoded part for adapters, and the precise refusals of malformed bodies."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
from pathlib import Path

import aiohttp
import pytest

from gateway.adapters.base import Delivery
from gateway.model import MessageState
from gateway.xoev.adapters import DECODED_PART, decoded, decoded_part

from .conftest import Gateway, antrag

pytestmark = pytest.mark.asyncio(loop_scope="session")

PORTAL = "/xoev/portal/messages"


def form(
    message: bytes | None, *attachments: tuple[str, str, bytes], message_type: str = "application/xml"
) -> aiohttp.FormData:
    data = aiohttp.FormData(quote_fields=False)  # file names as a browser sends them (raw UTF-8)
    if message is not None:
        data.add_field("message", io.BytesIO(message), content_type=message_type, filename="antrag.xml")
    for name, filename, content in attachments:
        data.add_field(name, io.BytesIO(content), content_type="application/pdf", filename=filename)
    return data


def tmp_parts(gateway: Gateway) -> list[Path]:
    return list(gateway.runtime.blobs.tmp_dir.glob("*.part"))


async def test_form_data_with_attachments(gateway: Gateway) -> None:
    message = antrag(anlagen=("grundriss.pdf", "lageplan.pdf"))
    grundriss = os.urandom(300_000)
    lageplan = b"%PDF-1.4\n" + os.urandom(1000)
    status, body, _ = await gateway.post(
        PORTAL,
        form(message, ("grundriss", "grundriss.pdf", grundriss), ("lageplan", "Lageplan Süd (1).pdf", lageplan)),
        sender="portal-a",
        content_type=None,  # FormData sets multipart/form-data with its boundary
    )
    assert status == 202, body
    stored = await gateway.settled(body["id"])
    assert stored.envelope.state is MessageState.ACKNOWLEDGED
    manifest, directory = gateway.delivered("inbox", body["id"])
    by_part = {f["part"]: f for f in manifest["files"]}
    assert by_part["data"]["sha512"] == hashlib.sha512(message).hexdigest()
    assert (directory / by_part["data"]["file"]).read_bytes() == message
    for name, content, filename in (
        ("grundriss", grundriss, "grundriss.pdf"),
        ("lageplan", lageplan, "Lageplan Süd (1).pdf"),
    ):
        entry = by_part[f"attachment:{name}"]
        assert entry["sha512"] == hashlib.sha512(content).hexdigest()
        assert entry["size"] == len(content)
        assert entry["original_filename"] == filename
        assert entry["attachment_id"] == name
        assert entry["media_type"] == "application/pdf"
        assert (directory / entry["file"]).read_bytes() == content

    # the decoded form: a file for the Fachverfahren, and gateway.xoev.adapters.decoded for adapters
    entry = by_part[DECODED_PART]
    assert (entry["file"], entry["media_type"]) == ("decoded.json", "application/json")
    as_file = json.loads((directory / entry["file"]).read_text("utf-8"))
    root = as_file["antrag.Einreichen.0100"]
    assert root["betrag"] == "12.50"  # xs:decimal stays a string (exact)
    assert root["anlage"] == ["grundriss.pdf", "lageplan.pdf"]
    assert root["@standard"] == "Testantrag"
    assert root["nachrichtenkopf.g2g"]["autor"]["kennung"] == "amt:0001"
    delivery = Delivery(stored.envelope, gateway.runtime.blobs, 1, stored.envelope.id)
    assert decoded_part(delivery) is not None
    assert await decoded(delivery) == as_file
    validator = gateway.runtime.subsystems["xoev"].validator  # type: ignore[attr-defined]
    assert validator is not None
    assert await validator.decode_to_dict(message) == as_file


async def test_multipart_related_with_start_part(gateway: Gateway) -> None:
    message = antrag()
    attachment = os.urandom(5000)
    with aiohttp.MultipartWriter("related", boundary="gw-boundary-1") as writer:
        part = writer.append(attachment, {"Content-Type": "image/png", "Content-ID": "<bild-1@portal>"})
        part.set_content_disposition("attachment", filename="bild.png")
        writer.append(message, {"Content-Type": "application/xml", "Content-ID": "<nachricht@portal>"})
    content_type = 'multipart/related; boundary="gw-boundary-1"; type="application/xml"; start="<nachricht@portal>"'
    status, body, _ = await gateway.post(PORTAL, writer, sender="portal-a", content_type=content_type)
    assert status == 202, body
    stored = await gateway.settled(body["id"])
    (picture,) = [a for a in stored.envelope.attachments if a.name != DECODED_PART]
    assert (picture.name, picture.attachment_id, picture.filename) == (
        "attachment:bild-1@portal",
        "bild-1@portal",
        "bild.png",
    )
    assert picture.sha512 == hashlib.sha512(attachment).hexdigest()
    assert stored.envelope.data is not None
    assert stored.envelope.data.sha512 == hashlib.sha512(message).hexdigest()


async def test_idempotent_multipart(gateway: Gateway) -> None:
    message = antrag()
    attachment = os.urandom(2000)
    first = await gateway.post(PORTAL, form(message, ("a", "a.pdf", attachment)), sender="portal-b", content_type=None)
    again = await gateway.post(PORTAL, form(message, ("a", "a.pdf", attachment)), sender="portal-b", content_type=None)
    assert (first[0], again[0]) == (202, 202)
    assert again[1]["id"] == first[1]["id"]
    assert again[1]["duplicate"] is True
    other = await gateway.post(
        PORTAL, form(message, ("a", "a.pdf", os.urandom(2000))), sender="portal-b", content_type=None
    )
    assert other[0] == 409


# -- refusals -----------------------------------------------------------------------------------------------


async def test_no_message_part(gateway: Gateway) -> None:
    status, body, _ = await gateway.post(PORTAL, form(None, ("a", "a.pdf", b"x")), sender="portal-a", content_type=None)
    assert status == 400
    assert body["type"].endswith("/multipart-invalid")
    assert tmp_parts(gateway) == []


async def test_two_message_parts(gateway: Gateway) -> None:
    data = form(antrag())
    data.add_field("message", io.BytesIO(antrag()), content_type="application/xml")
    status, body, _ = await gateway.post(PORTAL, data, sender="portal-a", content_type=None)
    assert status == 400
    assert body["title"] == "Two message parts"


async def test_message_part_not_xml(gateway: Gateway) -> None:
    status, body, _ = await gateway.post(
        PORTAL, form(b'{"json": true}', message_type="application/json"), sender="portal-a", content_type=None
    )
    assert status == 415
    assert body["type"].endswith("/unsupported-media-type")


async def test_too_many_attachments_leaves_nothing_behind(gateway: Gateway) -> None:
    attachments = [(f"a{i}", f"a{i}.pdf", os.urandom(10_000)) for i in range(4)]  # max_attachments = 3
    status, body, _ = await gateway.post(PORTAL, form(antrag(), *attachments), sender="portal-a", content_type=None)
    assert status == 400
    assert body["type"].endswith("/too-many-attachments")
    assert tmp_parts(gateway) == []
    for _, _, content in attachments:  # nothing of a refused request reached the blob store
        assert not gateway.runtime.blobs.file_for(hashlib.sha512(content).hexdigest()).exists()


async def test_attachments_over_the_body_limit(gateway: Gateway) -> None:
    big = [("a", "a.bin", os.urandom(600_000)), ("b", "b.bin", os.urandom(600_000))]  # 1_000_000 allowed
    status, body, _ = await gateway.post(PORTAL, form(antrag(), *big), sender="portal-a", content_type=None)
    assert status == 413
    assert body["type"].endswith("/payload-too-large")
    assert tmp_parts(gateway) == []


async def test_invalid_message_commits_no_attachment(gateway: Gateway) -> None:
    content = os.urandom(10_000)
    status, body, _ = await gateway.post(
        PORTAL, form(antrag(betrag="viel"), ("a", "a.pdf", content)), sender="portal-a", content_type=None
    )
    assert status == 422
    assert body["issues"][0]["path"].endswith("/betrag")
    assert not gateway.runtime.blobs.file_for(hashlib.sha512(content).hexdigest()).exists()
    assert tmp_parts(gateway) == []


async def test_encoded_parts_are_refused(gateway: Gateway) -> None:
    for header, detail in (
        ("Content-Transfer-Encoding: base64", "Content-Transfer-Encoding base64"),
        ("Content-Encoding: gzip", "Content-Encoding gzip"),
    ):
        body = (
            b"--gw-boundary-2\r\n"
            b'Content-Disposition: form-data; name="message"\r\n'
            b"Content-Type: application/xml\r\n"
            + header.encode()
            + b"\r\n\r\n"
            + base64.b64encode(antrag())
            + b"\r\n--gw-boundary-2--\r\n"
        )
        status, problem, _ = await gateway.post(
            PORTAL, body, sender="portal-a", content_type='multipart/form-data; boundary="gw-boundary-2"'
        )
        assert status == 400
        assert detail in problem["detail"]


async def test_multipart_without_boundary(gateway: Gateway) -> None:
    status, body, _ = await gateway.post(PORTAL, b"--x\r\n\r\n", sender="portal-a", content_type="multipart/form-data")
    assert status == 400
    assert body["type"].endswith("/multipart-invalid")


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/json", "application/octet-stream", "application/xml; charset=iso-8859-1"],
)
async def test_wrong_content_type(gateway: Gateway, content_type: str | None) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    async with gateway.session().post(
        gateway.base_url + PORTAL,
        data=antrag(),
        headers={**gateway.auth("portal-a"), **headers},
        skip_auto_headers=["Content-Type"],
    ) as resp:
        body = await resp.json(content_type=None)
        assert resp.status == 415, body
    assert body["type"].endswith("/unsupported-media-type")


@pytest.mark.parametrize("content_type", ["text/xml", "application/xml; charset=UTF-8", "application/xoev+xml"])
async def test_xml_content_types(gateway: Gateway, content_type: str) -> None:
    status, body, _ = await gateway.post(PORTAL, antrag(), sender="portal-a", content_type=content_type)
    assert status == 202, body
