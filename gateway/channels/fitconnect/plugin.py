"""Registers the ``fitconnect`` reply channel type (built in: listed in ``gateway.plugins.DEFAULT_PLUGINS``)."""

from __future__ import annotations

from gateway.channels.base import ReplyChannelType
from gateway.channels.fitconnect.channel import create
from gateway.hookspecs import hookimpl


@hookimpl
def gateway_reply_channel_types() -> list[ReplyChannelType]:
    return [
        ReplyChannelType(
            name="fitconnect",
            create=create,
            description="FIT-Connect reply: answers in the application's case, encrypted to the applicant's key",
        )
    ]
