"""The contract between the gateway and a reply channel (FIT-Connect reply, XÖV answer, BundID, post).

A plugin contributes :class:`ReplyChannelType` objects through the ``gateway_reply_channel_types``
hook; the operator declares instances in ``gateway.toml`` (``[reply_channels.NAME] type = "..."``).
For each answer the reply router asks the channels a route allows, in order, whether they can carry
it (:meth:`ReplyChannel.suitable`); the first that can is chosen, else the fallback, with every
reason recorded. The answer worker then calls :meth:`ReplyChannel.send` at least once per answer
(idempotent on :attr:`Outgoing.idempotency_key`), and :meth:`ReplyChannel.confirm` while the
recipient has not yet confirmed or refused it. Confirmation is polled (``check_again_after``); a
channel whose upstream can announce news (e.g. a FIT-Connect callback) also implements
:class:`ConfirmationHints`, and the worker then polls at once when it is told to.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from gateway.adapters.base import BlobReader
    from gateway.model import Answer, Envelope
    from gateway.problems import Problem


class SendOutcome(enum.StrEnum):
    SENT = "sent"  # the channel took it; the recipient's confirmation follows (confirm() is polled)
    CONFIRMED = "confirmed"  # taken and confirmed at once (e.g. a synchronous 2xx, a postal adapter)
    TRANSIENT = "transient"  # try again later (backoff): 5xx, timeout, 429
    PERMANENT = "permanent"  # will never work (e.g. misconfiguration): dead letter, an operator decides
    REFUSED = "refused"  # the recipient refused it (with problems): final, never retried blindly


@dataclass(frozen=True, slots=True)
class SendResult:
    outcome: SendOutcome
    reason: str = ""  # short, technical, no personal data: it is logged and audited
    reference: str | None = None  # the channel's id for the answer (e.g. a FIT-Connect reply id)
    retry_after: float | None = None  # TRANSIENT only: the peer asked to wait this long
    problems: Sequence[Problem] = ()  # REFUSED: what the recipient found wrong


class ConfirmOutcome(enum.StrEnum):
    PENDING = "pending"  # nothing yet (or upstream unreachable right now): ask again later
    CONFIRMED = "confirmed"  # e.g. FIT-Connect accept-reply
    REFUSED = "refused"  # e.g. FIT-Connect reject-reply, with its problems
    # The evidence cannot be trusted or the answer is unknown upstream (a forged or inconsistent
    # event log, a reply the Zustelldienst does not know): dead letter with the reason, an operator decides.
    INVALID = "invalid"


@dataclass(frozen=True, slots=True)
class ConfirmResult:
    outcome: ConfirmOutcome
    reason: str = ""
    problems: Sequence[Problem] = ()
    check_again_after: float | None = None  # PENDING: seconds until the next look (None: the channel's default)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One answer on its way: the answer, the inbound message it answers, and read access to both payloads."""

    answer: Answer
    message: Envelope  # the inbound message, with its ReplyContext
    blobs: BlobReader
    attempt: int  # 1 for the first send attempt
    idempotency_key: str  # stable across attempts and operator retries: the answer id


@dataclass(frozen=True, slots=True)
class ChannelContext:
    """What a channel instance gets from the host when it is created."""

    name: str  # the instance name from gateway.toml
    base_dir: Path  # directory of gateway.toml: resolve relative paths against it
    resolve_secret: Callable[[Mapping[str, Any], str], str | None]
    production: bool
    # The configured inbound sources and adapters by name: a channel answering over the channel an
    # application came in by reuses that source's credentials; the postal fallback hands over to an adapter.
    sources: Mapping[str, Any] = field(default_factory=dict)
    adapters: Mapping[str, Any] = field(default_factory=dict)
    options_key: str = ""  # "reply_channels.NAME": prefix for ConfigError keys


@runtime_checkable
class ReplyChannel(Protocol):
    name: str
    # False for channels that leave the digital world (a postal/print adapter): a Bescheid may go
    # to an electronic channel only with the applicant's consent, to a non-electronic one always.
    electronic: bool

    async def suitable(self, message: Envelope, answer: Answer) -> str | None:
        """``None`` when this channel can carry ``answer`` to the applicant of ``message``, else why not
        (short, no personal data; recorded with the answer when the router falls back)."""
        ...

    async def send(self, outgoing: Outgoing) -> SendResult:
        """Send the answer. Called until it returns a final outcome; must be idempotent on the key."""
        ...

    async def confirm(self, outgoing: Outgoing) -> ConfirmResult:
        """Ask whether the recipient confirmed or refused a SENT answer (e.g. its event log)."""
        ...

    async def check(self) -> str | None:
        """Readiness: ``None`` when ready, else a short reason (no secrets)."""
        ...

    async def close(self) -> None: ...


# ``listener(references)``: a confirmation poll is worth doing now for the answers whose
# SendResult.reference is in ``references`` (empty: any SENT answer of this channel).
ConfirmationListener = Callable[[Sequence[str]], None]


@runtime_checkable
class ConfirmationHints(Protocol):
    """Optional for a :class:`ReplyChannel`: upstream can tell that confirmations may have arrived.

    The answer worker subscribes once per channel instance; the listener must be cheap and must not
    block (it typically marks the answers due and wakes the worker, which then calls ``confirm``).
    The references are hints from upstream, never trusted beyond choosing whom to poll first: the
    outcome always comes from ``confirm``.
    """

    def subscribe_confirmations(self, listener: ConfirmationListener) -> Callable[[], None]:
        """Register ``listener``; returns the function that unsubscribes it."""
        ...


@runtime_checkable
class AnswerVetting(Protocol):
    """Optional for a :class:`ReplyChannel`: checks an answer's content before it is accepted at all.

    The hand-over calls it once the router chose this channel, before the answer is committed; every
    string returned is an error in what the Fachverfahren handed over (e.g. an XÖV answer that fails
    its schema): the hand-over is refused (HTTP 422 listing them) and nothing is stored or sent.
    Problems of the channel itself (a peer down) are not for here; they show when sending.
    """

    async def vet(self, message: Envelope, answer: Answer, blobs: BlobReader) -> Sequence[str]:
        """The errors in ``answer`` for this channel (empty when it can go)."""
        ...


@dataclass(frozen=True, slots=True)
class ReplyChannelType:
    """A reply channel type contributed by a plugin; ``create`` validates the options (raise ``ConfigError``)."""

    name: str
    create: Callable[[ChannelContext, Mapping[str, Any]], ReplyChannel]
    description: str = ""
