"""The inbound message's :class:`~gateway.model.ReplyContext` from FIT-Connect submission metadata.

Kept with the message at intake because the Zustelldienst deletes the submission (and with it the
metadata) after accept, while an answer may follow weeks later. Read from the already checked
metadata: ``replyChannel`` (exactly one of the channels below: the applicant's choice and its
parameters), ``additionalReferenceInfo.zustimmungZumDigitalenBescheid`` (consent to an electronic
Bescheid) and ``.idBundDeApplicationId`` (DeutschlandID Statusmonitor), plus case and destination.
For ``fitConnect`` the RFC 7638 thumbprint of the reply key is added to the details
(``encryptionPublicKeyThumbprint``), so a later answer can be pinned to exactly that key; whether the
key is usable is decided by the reply channel, not here (a weak key is no reason to reject an
application: the answer goes by another channel).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from gateway.fitconnect.reply_key import ReplyKeyError, validate_reply_key
from gateway.model import ReplyContext

SOURCE_TYPE = "fitconnect"
REPLY_CHANNELS = frozenset({"eMail", "deMail", "fink", "elster", "fitConnect", "idBundDeMailbox"})
THUMBPRINT_DETAIL = "encryptionPublicKeyThumbprint"


def reply_context(metadata: Mapping[str, Any] | None, *, case_id: str, destination_id: str) -> ReplyContext:
    choice: str | None = None
    details: dict[str, Any] = {}
    consent: bool | None = None
    application_id: str | None = None
    metadata = metadata if isinstance(metadata, Mapping) else {}
    channel = metadata.get("replyChannel")
    if isinstance(channel, Mapping) and len(channel) == 1:
        ((name, params),) = channel.items()
        if name in REPLY_CHANNELS and isinstance(params, Mapping):
            choice, details = name, dict(params)
    if choice == "fitConnect":
        # An unusable key gets no thumbprint: the reply channel says why when an answer is routed.
        with contextlib.suppress(ReplyKeyError):
            details[THUMBPRINT_DETAIL] = validate_reply_key(details.get("encryptionPublicKey")).thumbprint
    reference = metadata.get("additionalReferenceInfo")
    if isinstance(reference, Mapping):
        if isinstance(reference.get("zustimmungZumDigitalenBescheid"), bool):
            consent = reference["zustimmungZumDigitalenBescheid"]
        if isinstance(reference.get("idBundDeApplicationId"), str):
            application_id = reference["idBundDeApplicationId"].lower()
    return ReplyContext(
        source_type=SOURCE_TYPE,
        choice=choice,
        details=details,
        case=case_id,
        destination=destination_id,
        consent_digital_bescheid=consent,
        application_id=application_id,
    )
