"""The bundled adapters against the host's real blob store and secret resolver (not the test doubles)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from adapters.blobdir import make_envelope
from adapters.webhook_receiver import Receiver
from gateway.adapters.base import AdapterContext, Delivery, DeliveryOutcome
from gateway.errors import ConfigErrors
from gateway.model import BlobRef, Envelope
from gateway.secrets import secret_resolver
from gateway.store.blobs import BlobStore
from gateway_filesystem import create as create_filesystem
from gateway_webhook import create as create_webhook


class StoreBackedBlobs:
    """Adapts ``make_envelope``'s synchronous ``put`` to the real store, so envelopes look alike."""

    def __init__(self, store: BlobStore) -> None:
        self.store = store

    def put(self, content: bytes, **kwargs: Any) -> BlobRef:
        with self.store.writer() as writer:
            writer.write(content)
            return writer.commit(**kwargs)

    def attachment(self, content: bytes, filename: str | None, media_type: str = "application/pdf") -> BlobRef:
        attachment_id = hashlib.sha256(content).hexdigest()[:32]
        return self.put(
            content,
            name=f"attachment:{attachment_id}",
            media_type=media_type,
            filename=filename,
            attachment_id=attachment_id,
        )


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    blob_store = BlobStore(tmp_path / "blobs")
    blob_store.open()
    return blob_store


def context(tmp_path: Path) -> AdapterContext:
    return AdapterContext("integration", tmp_path, secret_resolver(tmp_path), production=False)


def envelope(store: BlobStore) -> Envelope:
    return make_envelope(StoreBackedBlobs(store), attachments=[(b"%PDF-1.7 plan", "Plan.pdf")])  # type: ignore[arg-type]


async def test_filesystem_with_real_blob_store(tmp_path: Path, store: BlobStore) -> None:
    adapter = create_filesystem(context(tmp_path), {"directory": "out"})
    message = envelope(store)
    result = await adapter.deliver(Delivery(message, store, 1, message.id))
    assert result.outcome is DeliveryOutcome.DELIVERED
    manifest = json.loads((tmp_path / "out" / message.id / "manifest.json").read_text())
    assert [f["file"] for f in manifest["files"]] == ["data.json", "Plan.pdf"]
    assert (tmp_path / "out" / message.id / "Plan.pdf").read_bytes() == b"%PDF-1.7 plan"


async def test_filesystem_small_messages_take_one_thread_call_with_the_same_outcomes(
    tmp_path: Path, store: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small messages from the gateway's own blob store are copied in one worker-thread call; the
    streaming path's outcomes hold there too (checked against the streaming path's own results)."""
    adapter = create_filesystem(context(tmp_path), {"directory": "out"})
    hops: list[str] = []
    real_to_thread = asyncio.to_thread

    async def counting(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        hops.append(getattr(fn, "__name__", "?"))
        return await real_to_thread(fn, *args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", counting)
    message = envelope(store)
    first = await adapter.deliver(Delivery(message, store, 1, message.id))
    assert first.outcome is DeliveryOutcome.DELIVERED
    assert hops == ["_deliver_at_once"]
    again = await adapter.deliver(Delivery(message, store, 2, message.id))
    assert (again.outcome, again.reason) == (DeliveryOutcome.DELIVERED, "already delivered")
    # Bit rot in the stored blob: permanent, nothing left behind.
    rotten = envelope(store)  # same content, so the same blob file as the delivered one's
    path = store.path(rotten.attachments[0])
    path.chmod(0o644)
    path.write_bytes(b"%PDF-1.7 plaN")
    result = await adapter.deliver(Delivery(rotten, store, 1, rotten.id))
    assert result.outcome is DeliveryOutcome.PERMANENT
    assert result.reason == f"part {rotten.attachments[0].name}: stored blob does not match its recorded sha512"
    # The blob file gone: transient (the store may be on a mount that comes back).
    path.unlink()
    result = await adapter.deliver(Delivery(rotten, store, 1, rotten.id))
    assert result.outcome is DeliveryOutcome.TRANSIENT
    assert result.reason == "reading the stored blob failed: ENOENT (No such file or directory)"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [message.id]  # no temporaries left


async def test_webhook_with_real_secret_resolver(
    tmp_path: Path, store: BlobStore, aiohttp_server: Callable[..., Awaitable[TestServer]]
) -> None:
    receiver = Receiver()
    server = await aiohttp_server(receiver.app())
    (tmp_path / "token").write_text("host-resolved-token\n")
    options = {"url": str(server.make_url("/inbox")), "format": "multipart", "auth_token": {"file": "token"}}
    adapter = create_webhook(context(tmp_path), options)
    try:
        message = envelope(store)
        result = await adapter.deliver(Delivery(message, store, 1, message.id))
    finally:
        await adapter.close()
    assert result.outcome is DeliveryOutcome.DELIVERED
    [request] = receiver.received
    assert request.headers["Authorization"] == "Bearer host-resolved-token"
    assert [p.content for p in request.parts[1:]] == [b'{"antrag": {"name": "Erika Mustermann"}}', b"%PDF-1.7 plan"]


@pytest.mark.parametrize(
    ("auth_token", "key"),
    [({"file": "missing"}, "auth_token"), ({"env": ""}, "auth_token.env"), ({"file": "a", "env": "B"}, "auth_token")],
)
def test_webhook_secret_errors_from_the_host_resolver_name_the_key(
    tmp_path: Path, auth_token: dict[str, str], key: str
) -> None:
    with pytest.raises(ConfigErrors) as raised:
        create_webhook(context(tmp_path), {"url": "https://fv.example/in", "auth_token": auth_token})
    (error,) = raised.value.errors
    assert error.key == key
