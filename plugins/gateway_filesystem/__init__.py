"""The ``filesystem`` adapter: drops each application as one complete directory into a folder.

Registered through the ``gateway`` entry-point group, exactly like a third-party plugin.
"""

from __future__ import annotations

from gateway.adapters.base import AdapterType
from gateway.hookspecs import hookimpl
from gateway_filesystem.adapter import FilesystemAdapter, create
from gateway_filesystem.options import FilesystemOptions

__all__ = ["FilesystemAdapter", "create", "gateway_adapter_types"]


@hookimpl
def gateway_adapter_types() -> list[AdapterType]:
    return [
        AdapterType(
            name="filesystem",
            create=create,
            options=FilesystemOptions,
            description="writes each message atomically as a directory (data, attachments, manifest.json)",
        )
    ]
