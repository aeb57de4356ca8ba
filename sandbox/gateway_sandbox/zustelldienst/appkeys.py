"""Typed application state keys."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from gateway_sandbox.zustelldienst.service import Sandbox

SANDBOX: web.AppKey[Sandbox] = web.AppKey("fitconnect_sandbox")
