"""The ``webhook`` adapter: POSTs each message (JSON or multipart) to a Fachverfahren's HTTP endpoint.

Registered through the ``gateway`` entry-point group, exactly like a third-party plugin.
"""

from __future__ import annotations

from gateway.adapters.base import AdapterType
from gateway.hookspecs import hookimpl
from gateway_webhook.adapter import WebhookAdapter, create
from gateway_webhook.options import WebhookAdapterOptions

__all__ = ["WebhookAdapter", "create", "gateway_adapter_types"]


@hookimpl
def gateway_adapter_types() -> list[AdapterType]:
    return [
        AdapterType(
            name="webhook",
            create=create,
            options=WebhookAdapterOptions,
            description="POSTs each message as JSON (inline base64) or multipart/form-data to an HTTP endpoint",
        )
    ]
