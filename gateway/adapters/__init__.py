"""Adapter contract: how a Fachverfahren receives a message. Types come from plugins."""

from gateway.adapters.base import (
    Adapter,
    AdapterContext,
    AdapterType,
    Delivery,
    DeliveryOutcome,
    DeliveryResult,
)

__all__ = ["Adapter", "AdapterContext", "AdapterType", "Delivery", "DeliveryOutcome", "DeliveryResult"]
