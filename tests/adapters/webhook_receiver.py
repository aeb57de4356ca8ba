"""A real aiohttp receiver for webhook adapter tests: records what arrived, answers as told."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import BodyPartReader, web
from multidict import CIMultiDict, CIMultiDictProxy


@dataclass
class Part:
    name: str | None
    filename: str | None
    content_type: str
    content: bytes

    @property
    def sha512(self) -> str:
        return hashlib.sha512(self.content).hexdigest()


@dataclass
class Received:
    method: str
    path: str
    headers: CIMultiDictProxy[str]
    body: bytes = b""
    parts: list[Part] = field(default_factory=list)


Responder = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def created(request: web.Request) -> web.StreamResponse:
    return web.json_response({"id": "FV-2026-000123", "status": "angenommen"}, status=201)


class Receiver:
    def __init__(self) -> None:
        self.received: list[Received] = []  # complete requests only
        self.started = 0  # requests whose handler ran (complete or not)
        self.respond: Responder = created
        self.release = asyncio.Event()  # for handlers that hang until the test ends

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.started += 1
        record = Received(request.method, request.path, CIMultiDictProxy(CIMultiDict(request.headers)))
        if request.content_type == "multipart/form-data":
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                assert isinstance(part, BodyPartReader)  # no nested multiparts expected
                content = await part.read()
                record.parts.append(
                    Part(part.name, part.filename, part.headers.get("Content-Type", ""), bytes(content))
                )
        else:
            record.body = await request.read()
        self.received.append(record)
        return await self.respond(request)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/inbox", self.handle)
        return app
