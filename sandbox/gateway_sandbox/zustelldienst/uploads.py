"""The rules submissions and replies share while they are assembled: announced attachments are
uploaded (any number of times) while ``incomplete``; submit needs all of them and stores the
encrypted parts; the recorded ``authenticationTags`` are what the submit event carries."""

from __future__ import annotations

from typing import Any, Protocol

from gateway.fitconnect import replies as reply_profile
from gateway_sandbox.zustelldienst.blobs import BlobStore
from gateway_sandbox.zustelldienst.problems import ProblemError


class Assembled(Protocol):
    """A submission or reply record: the fields the shared rules use."""

    id: str
    announced: list[str]
    uploaded: list[str]
    status: Any
    has_data: bool
    tags: dict[str, Any] | None


def check_upload(record: Assembled, attachment_id: str, *, state_problem: str, what: str) -> None:
    if attachment_id not in record.announced:
        raise ProblemError(422, "attachment-not-announced", f"attachment {attachment_id} was not announced")
    if record.status != "incomplete":
        raise ProblemError(422, state_problem, f"{what} is {record.status}; attachments are closed")


def record_upload(record: Assembled, attachment_id: str, tag: str) -> None:
    if attachment_id not in record.uploaded:
        record.uploaded.append(attachment_id)
    record.tags = record.tags or {"attachments": {}}
    record.tags.setdefault("attachments", {})[attachment_id] = tag


def store_submit(
    record: Assembled,
    blobs: BlobStore,
    *,
    metadata: str,
    data: str | None,
    tags: tuple[str, str | None],
    state_problem: str,
    what: str,
) -> dict[str, Any]:
    """Check that ``record`` can be submitted, store its encrypted parts, record and return the tags."""
    if record.status != "incomplete":
        raise ProblemError(422, state_problem, f"{what} is already {record.status}")
    missing = [a for a in record.announced if a not in record.uploaded]
    if missing:
        raise ProblemError(
            422, "missing-attachments", f"announced attachments not uploaded: {', '.join(missing)}", missing=missing
        )
    blobs.write_text(record.id, "metadata", metadata)
    if data is not None:
        blobs.write_text(record.id, "data", data)
    uploaded = dict((record.tags or {}).get("attachments", {}))
    record.tags = reply_profile.authentication_tags(
        metadata=tags[0],
        data=tags[1] if data is not None else None,
        attachments={a: uploaded[a] for a in record.announced},
    )
    record.has_data = data is not None
    record.status = "submitted"
    return record.tags
