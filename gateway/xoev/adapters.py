"""For adapters: the decoded (JSON) form of an XÖV message received over ``xoev-http``.

At intake the message is decoded once against its schema (``XoevValidator.decode_to_dict``: values
typed by the schema, keys without namespace prefixes) and stored as the part ``xoev:decoded``
(``decoded.json``, ``application/json``) beside the original XML. An adapter reads it with::

    from gateway.xoev.adapters import decoded

    async def deliver(self, delivery):
        data = await decoded(delivery)   # {"<root local name>": {...}} or None
        ...

Adapters that copy every part (filesystem) deliver ``decoded.json`` as a file next to the XML.
"""

from __future__ import annotations

import json
from typing import Any

from gateway.adapters.base import Delivery
from gateway.model import BlobRef

DECODED_PART = "xoev:decoded"  # == gateway.sources.xoev_http.source.DECODED_PART (kept import-light for adapters)
MAX_DECODED_BYTES = 256 * 1024 * 1024  # a decoded part larger than this was not written by the gateway


def decoded_part(delivery: Delivery) -> BlobRef | None:
    """The ``xoev:decoded`` part of the message, if the channel stored one."""
    return next((b for b in delivery.envelope.attachments if b.name == DECODED_PART), None)


async def decoded(delivery: Delivery) -> dict[str, Any] | None:
    """The decoded message as a dict, or None when the message has no decoded part (not XÖV, or the
    source was configured with ``store_decoded = false``)."""
    part = decoded_part(delivery)
    if part is None:
        return None
    if part.size > MAX_DECODED_BYTES:
        raise ValueError(f"decoded part of {part.size} bytes exceeds {MAX_DECODED_BYTES}")
    chunks = [chunk async for chunk in delivery.blobs.iter_chunks(part)]
    value = json.loads(b"".join(chunks))
    if not isinstance(value, dict):
        raise ValueError("the decoded part is not a JSON object")
    return value
