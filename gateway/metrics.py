"""Prometheus metrics (prometheus-client), one registry per gateway instance.

Labels are bounded by configuration (source, route, adapter names; outcome enums): never ids.
Channel metrics belong to the channel's subsystem, registered in this registry (``Metrics.registry``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.received = Counter("gateway_messages_received", "Messages durably received", ["source"], registry=r)
        self.duplicates = Counter(
            "gateway_messages_duplicate", "Messages received again and stored once", ["source"], registry=r
        )
        self.rejected = Counter("gateway_messages_rejected", "Messages rejected", ["source", "reason"], registry=r)
        self.routed = Counter("gateway_messages_routed", "Messages routed", ["source", "route"], registry=r)
        self.delivered = Counter(
            "gateway_messages_delivered", "Messages delivered", ["source", "route", "adapter"], registry=r
        )
        self.dead = Counter(
            "gateway_messages_dead", "Messages dead-lettered", ["source", "route", "adapter"], registry=r
        )
        self.attempts = Counter(
            "gateway_delivery_attempts", "Delivery attempts by outcome", ["adapter", "outcome"], registry=r
        )
        self.latency = Histogram(
            "gateway_delivery_latency_seconds",
            "Time from receipt to confirmed delivery",
            ["adapter"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 86400),
            registry=r,
        )
        self.attempt_duration = Histogram(
            "gateway_delivery_attempt_seconds", "Duration of one adapter call", ["adapter"], registry=r
        )
        self.acks = Counter("gateway_acks", "Upstream acknowledgements by outcome", ["source", "result"], registry=r)
        self.queue_depth = Gauge("gateway_queue_depth", "Messages by state", ["state"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
