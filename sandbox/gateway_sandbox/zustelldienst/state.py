"""The sandbox's state: destinations, clients, submissions, cases with their event logs, callback
deliveries. Kept in memory and, with a state dir, written as one JSON document after every change
(atomic replace), so a restarted sandbox continues where it stopped. Encrypted contents live in the
:class:`~gateway_sandbox.zustelldienst.blobs.BlobStore`, never in this document.

The state file holds test secrets (client secrets, callback secrets) and is created with mode 0600.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gateway_sandbox.zustelldienst.config import (
    CallbackConfig,
    ClientConfig,
    DestinationConfig,
    ServiceConfig,
    SubmissionSchema,
)

STATE_VERSION = 1
STATE_FILE = "state.json"

SubmissionStatus = Literal["incomplete", "submitted", "forwarded", "accepted", "rejected", "deleted"]
READABLE_STATUSES = ("submitted", "forwarded")
MAX_DELIVERY_LOG = 2000


@dataclass
class SubmissionRecord:
    id: str
    case_id: str
    destination_id: str
    client_id: str
    service_type: dict[str, str]
    announced: list[str]
    created_at: float  # sandbox clock
    status: SubmissionStatus = "incomplete"
    uploaded: list[str] = field(default_factory=list)
    callback_url: str | None = None
    callback_secret: str | None = field(default=None, repr=False)
    submitted_at: float | None = None
    closed_at: float | None = None
    has_data: bool = False
    # authenticationTags as recorded in the submit-submission SET (what a correct accept repeats)
    tags: dict[str, Any] | None = None

    def reduced(self, service_field: str = "serviceType") -> dict[str, Any]:
        """SubmissionReduced (OpenAPI 1.1.3; v2 names the service ``publicService``)."""
        out: dict[str, Any] = {
            "destinationId": self.destination_id,
            "submissionId": self.id,
            "caseId": self.case_id,
            "attachments": [a for a in self.announced if a in self.uploaded],
            service_field: dict(self.service_type),
        }
        if self.callback_url:
            out["callback"] = {"url": self.callback_url}
        return out

    def for_pickup(self) -> dict[str, str]:
        return {"destinationId": self.destination_id, "submissionId": self.id, "caseId": self.case_id}


ReplyStatus = Literal["incomplete", "submitted", "accepted", "rejected"]


@dataclass
class ReplyRecord:
    """A reply of the destination to the online service (shapes: :mod:`gateway.fitconnect.replies`)."""

    id: str
    case_id: str
    destination_id: str
    client_id: str  # the destination's client that created it: only it may upload and submit
    announced: list[str]
    created_at: float  # sandbox clock
    status: ReplyStatus = "incomplete"
    uploaded: list[str] = field(default_factory=list)
    submitted_at: float | None = None
    closed_at: float | None = None
    has_data: bool = False
    tags: dict[str, Any] | None = None  # authenticationTags as recorded in submit-reply

    def reduced(self) -> dict[str, Any]:
        """ReplyReduced, plus the status (see the profile's ``reply-view`` assumption)."""
        return {
            "replyId": self.id,
            "caseId": self.case_id,
            "destinationId": self.destination_id,
            "attachments": [a for a in self.announced if a in self.uploaded],
            "status": self.status,
        }

    def item(self) -> dict[str, str]:
        return {"replyId": self.id, "caseId": self.case_id, "destinationId": self.destination_id}


@dataclass
class EventRecord:
    token: str
    submission_id: str | None  # None for an event about a reply
    event: str
    jti: str
    issuer: str
    recorded_at: float  # sandbox clock
    reply_id: str | None = None


@dataclass
class CaseRecord:
    id: str
    destination_id: str
    events: list[EventRecord] = field(default_factory=list)


@dataclass
class DeliveryAttempt:
    at: float  # wall clock
    timestamp: int  # the callback-timestamp header sent
    status: int | None = None
    error: str | None = None
    faults: list[str] = field(default_factory=list)


@dataclass
class DeliveryRecord:
    id: str
    target: Literal["destination", "sender"]
    url: str
    secret: str = field(repr=False)
    type: str = ""
    body: str = ""
    submission_ids: list[str] = field(default_factory=list)
    reply_ids: list[str] = field(default_factory=list)
    created_at: float = 0.0  # wall clock
    state: Literal["pending", "delivered", "failed"] = "pending"
    attempts: list[DeliveryAttempt] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)  # injected faults active when it was created

    def public(self) -> dict[str, Any]:
        """The delivery as the inspection API shows it (no secret)."""
        return {
            "id": self.id,
            "target": self.target,
            "url": self.url,
            "type": self.type,
            "submissionIds": list(self.submission_ids),
            "replyIds": list(self.reply_ids),
            "body": json.loads(self.body) if self.body else None,
            "createdAt": self.created_at,
            "state": self.state,
            "attempts": [dataclasses.asdict(a) for a in self.attempts],
            "faults": list(self.faults),
        }


@dataclass
class CallbackFaults:
    """Fault injection for negative tests of callback receivers; applies to new deliveries."""

    wrong_hmac: bool = False
    stale_timestamp: bool = False
    duplicate: bool = False

    def active(self) -> list[str]:
        return [n.replace("_", "-") for n, v in dataclasses.asdict(self).items() if v]


# --------------------------------------------------------------------------------------------------
# (De)serialisation of the config-shaped records


def destination_to_dict(d: DestinationConfig) -> dict[str, Any]:
    out = dataclasses.asdict(d)
    return out


def destination_from_dict(raw: dict[str, Any]) -> DestinationConfig:
    services = tuple(
        ServiceConfig(
            identifier=s["identifier"],
            regions=tuple(s["regions"]),
            submission_schemas=tuple(SubmissionSchema(**x) for x in s["submission_schemas"]),
        )
        for s in raw["services"]
    )
    callback = CallbackConfig(**raw["callback"]) if raw.get("callback") else None
    return DestinationConfig(
        id=raw["id"],
        services=services,
        encryption_keys=tuple(raw["encryption_keys"]),
        signing_keys=tuple(raw["signing_keys"]),
        metadata_versions=tuple(raw["metadata_versions"]),
        encryption_kid=raw["encryption_kid"],
        status=raw["status"],
        callback=callback,
        contact_information=dict(raw.get("contact_information") or {}),
        reply_channels=raw.get("reply_channels"),
    )


def client_to_dict(c: ClientConfig) -> dict[str, Any]:
    return dataclasses.asdict(c)


def client_from_dict(raw: dict[str, Any]) -> ClientConfig:
    return ClientConfig(
        id=raw["id"], secret=raw["secret"], scopes=tuple(raw["scopes"]), destinations=tuple(raw.get("destinations", ()))
    )


def fingerprint(raw: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(raw, sort_keys=True).encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------------------


@dataclass
class SandboxState:
    destinations: dict[str, DestinationConfig] = field(default_factory=dict)
    clients: dict[str, ClientConfig] = field(default_factory=dict)
    submissions: dict[str, SubmissionRecord] = field(default_factory=dict)
    cases: dict[str, CaseRecord] = field(default_factory=dict)
    replies: dict[str, ReplyRecord] = field(default_factory=dict)
    # replyId -> what the online service reported it received (decrypted; sandbox inspection only)
    received: dict[str, dict[str, Any]] = field(default_factory=dict)
    jtis: set[str] = field(default_factory=set)
    deliveries: list[DeliveryRecord] = field(default_factory=list)
    faults: CallbackFaults = field(default_factory=CallbackFaults)
    clock_offset: float = 0.0
    token_generation: int = 0  # tokens of an older generation are revoked
    # "destination:<id>" / "client:<id>" -> fingerprint of the config entry last applied
    config_fingerprints: dict[str, str] = field(default_factory=dict)
    path: Path | None = None

    def apply_config(self, destinations: tuple[DestinationConfig, ...], clients: tuple[ClientConfig, ...]) -> None:
        """Seed from the config. An entry the config changed since the last start replaces the stored one;
        an unchanged entry keeps its runtime changes (key rollover, status) across restarts."""
        for d in destinations:
            raw = destination_to_dict(d)
            key, fp = f"destination:{d.id}", fingerprint(raw)
            if d.id not in self.destinations or self.config_fingerprints.get(key) != fp:
                self.destinations[d.id] = d
                self.config_fingerprints[key] = fp
        for c in clients:
            raw = client_to_dict(c)
            key, fp = f"client:{c.id}", fingerprint(raw)
            if c.id not in self.clients or self.config_fingerprints.get(key) != fp:
                self.clients[c.id] = c
                self.config_fingerprints[key] = fp

    # -- persistence ---------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "destinations": [destination_to_dict(d) for d in self.destinations.values()],
            "clients": [client_to_dict(c) for c in self.clients.values()],
            "submissions": [dataclasses.asdict(s) for s in self.submissions.values()],
            "cases": [dataclasses.asdict(c) for c in self.cases.values()],
            "replies": [dataclasses.asdict(r) for r in self.replies.values()],
            "received": self.received,
            "jtis": sorted(self.jtis),
            "deliveries": [dataclasses.asdict(d) for d in self.deliveries],
            "faults": dataclasses.asdict(self.faults),
            "clockOffset": self.clock_offset,
            "tokenGeneration": self.token_generation,
            "configFingerprints": self.config_fingerprints,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any], path: Path | None = None) -> SandboxState:
        if raw.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported state version {raw.get('version')!r}")
        state = cls(path=path)
        state.destinations = {d["id"]: destination_from_dict(d) for d in raw["destinations"]}
        state.clients = {c["id"]: client_from_dict(c) for c in raw["clients"]}
        state.submissions = {s["id"]: SubmissionRecord(**s) for s in raw["submissions"]}
        state.cases = {
            c["id"]: CaseRecord(
                id=c["id"], destination_id=c["destination_id"], events=[EventRecord(**e) for e in c["events"]]
            )
            for c in raw["cases"]
        }
        state.replies = {r["id"]: ReplyRecord(**r) for r in raw.get("replies", [])}  # absent before replies
        state.received = dict(raw.get("received", {}))
        state.jtis = set(raw["jtis"])
        state.deliveries = [
            DeliveryRecord(**{**d, "attempts": [DeliveryAttempt(**a) for a in d["attempts"]]})
            for d in raw["deliveries"]
        ]
        state.faults = CallbackFaults(**raw["faults"])
        state.clock_offset = float(raw["clockOffset"])
        state.token_generation = int(raw["tokenGeneration"])
        state.config_fingerprints = dict(raw["configFingerprints"])
        return state

    @classmethod
    def open(cls, state_dir: Path | None) -> SandboxState:
        if state_dir is None:
            return cls()
        path = state_dir / STATE_FILE
        if not path.exists():
            return cls(path=path)
        return cls.from_json(json.loads(path.read_text(encoding="utf-8")), path=path)

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(self.to_json(), fh, separators=(",", ":"))
        os.replace(tmp, self.path)

    # -- queries ---------------------------------------------------------------------------------------

    def case_submissions(self, case_id: str) -> list[SubmissionRecord]:
        return [s for s in self.submissions.values() if s.case_id == case_id]

    def case_clients(self, case_id: str) -> set[str]:
        """The clients (online services) that created a submission in the case."""
        return {s.client_id for s in self.case_submissions(case_id)}

    def reply_events(self, reply_id: str) -> list[EventRecord]:
        reply = self.replies.get(reply_id)
        if reply is None or reply.case_id not in self.cases:
            return []
        return [e for e in self.cases[reply.case_id].events if e.reply_id == reply_id]

    def events_of(self, submission_id: str) -> list[EventRecord]:
        sub = self.submissions.get(submission_id)
        if sub is None or sub.case_id not in self.cases:
            return []
        return [e for e in self.cases[sub.case_id].events if e.submission_id == submission_id]
