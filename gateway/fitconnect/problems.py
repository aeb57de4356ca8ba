"""THE catalogue of problems a FIT-Connect subscriber puts into ``reject-submission`` SETs.

FITKO's docs say ``type`` and ``instance`` MUST be copied exactly from the documented catalogue and
``title`` SHOULD be. The exact type URIs could not be checked against a primary source (digest §3.3,
§10), so every URI lives here and nowhere else: correcting one is a one-line change. Each receipt
check of the subscriber maps its failure to exactly one :class:`ProblemKind`; ``docs/fitconnect-problems.md``
lists them (a test keeps the two in step).

``detail`` texts are written by the checks and never contain payload values (personal data): they say
which rule failed, not what the sender sent.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from gateway.problems import Problem

PROBLEM_PREFIX = "https://schema.fitko.de/fit-connect/events/problems/"


class InstanceKind(enum.StrEnum):
    """What ``instance`` names: one of FIT-Connect's payload parts, or nothing."""

    NONE = "none"
    METADATA = "metadata"
    DATA = "data"
    ATTACHMENT = "attachment"  # rendered as "attachment:<attachmentId>"


@dataclass(frozen=True, slots=True)
class ProblemKind:
    code: str  # stable key used by the subscriber, metrics and the docs
    suffix: str  # the part of the type URI after PROBLEM_PREFIX
    title: str
    instance: InstanceKind
    description: str  # when it is raised (for the docs)
    confirmed: bool = False  # True only once the URI is checked against FITKO's published catalogue

    @property
    def type(self) -> str:
        return PROBLEM_PREFIX + self.suffix

    def instance_for(self, attachment_id: str | None = None) -> str | None:
        if self.instance is InstanceKind.NONE:
            return None
        if self.instance is InstanceKind.ATTACHMENT:
            if not attachment_id:
                raise ValueError(f"problem {self.code} needs an attachment id")
            return f"attachment:{attachment_id.lower()}"
        return self.instance.value

    def problem(self, detail: str, *, attachment_id: str | None = None) -> Problem:
        return Problem(type=self.type, title=self.title, detail=detail, instance=self.instance_for(attachment_id))


def _kinds(*kinds: ProblemKind) -> Mapping[str, ProblemKind]:
    out: dict[str, ProblemKind] = {}
    for kind in kinds:
        if kind.code in out:
            raise ValueError(f"duplicate problem code {kind.code}")
        out[kind.code] = kind
    seen = {(k.suffix, k.instance) for k in kinds}
    if len(seen) != len(kinds):
        raise ValueError("two catalogue entries share type and instance kind")
    return MappingProxyType(out)


_N, _M, _D, _A = InstanceKind.NONE, InstanceKind.METADATA, InstanceKind.DATA, InstanceKind.ATTACHMENT

# fmt: off
CATALOGUE: Mapping[str, ProblemKind] = _kinds(
    # -- event log (digest §9.5, §9.6) ------------------------------------------------------------
    ProblemKind("invalid-event-log", "invalid-event-log", "Ungültiges Event-Log", _N,
                "The case's event log is inconsistent: a SET is malformed, its signature does not verify with "
                "the issuer's key (ZSD JWKS or destination key), its key is not valid, or there is not exactly "
                "one submit-submission event for the submission."),
    ProblemKind("missing-authentication-tags", "missing-authentication-tags", "Authentication-Tags fehlen", _N,
                "The submit-submission event carries no (well-formed) authenticationTags."),
    # -- authentication tags (§9.7, §9.17, §9.22) --------------------------------------------------
    ProblemKind("metadata-incorrect-authentication-tag", "incorrect-authentication-tag",
                "Authentication-Tag ungültig", _M,
                "The metadata JWE's authentication tag differs from the one in the event log."),
    ProblemKind("data-incorrect-authentication-tag", "incorrect-authentication-tag",
                "Authentication-Tag ungültig", _D,
                "The data JWE's authentication tag differs from (or is missing in) the event log."),
    ProblemKind("attachment-incorrect-authentication-tag", "incorrect-authentication-tag",
                "Authentication-Tag ungültig", _A,
                "An attachment JWE's authentication tag differs from the one in the event log."),
    # -- decryption (§9.7, §9.8, §9.18, §9.23) -----------------------------------------------------
    ProblemKind("metadata-encryption-issue", "encryption-issue", "Entschlüsselungsfehler", _M,
                "The metadata JWE is malformed, uses algorithms outside the FIT-Connect profile, or no "
                "configured private key decrypts it (wrong or retired key, tampered ciphertext)."),
    ProblemKind("data-encryption-issue", "encryption-issue", "Entschlüsselungsfehler", _D,
                "The data JWE is malformed, outside the profile, or cannot be decrypted."),
    ProblemKind("attachment-encryption-issue", "encryption-issue", "Entschlüsselungsfehler", _A,
                "An attachment JWE is malformed, outside the profile, or cannot be decrypted."),
    # -- metadata (§9.9 - §9.16) --------------------------------------------------------------------
    ProblemKind("metadata-too-large", "technical-error", "Technischer Fehler", _M,
                "The decrypted (or inflated) metadata exceeds the gateway's bound of 8 MiB."),
    ProblemKind("metadata-syntax-violation", "syntax-violation", "Syntax-Fehler", _M,
                "The decrypted metadata is not UTF-8 JSON (an object, without duplicate members)."),
    ProblemKind("missing-schema", "missing-schema", "Schema-Referenz fehlt", _M,
                "The metadata has no $schema and the destination does not treat that as 1.0.0 "
                "(allow_missing_metadata_schema = false)."),
    ProblemKind("metadata-unsupported-schema", "unsupported-schema", "Schema nicht unterstützt", _M,
                "The metadata $schema names a version the gateway has no schema for, does not support, or "
                "the destination does not list in metadataVersions."),
    ProblemKind("metadata-schema-violation", "schema-violation", "Schema-Verletzung", _M,
                "The metadata violates the JSON schema of its version (Draft 2020-12)."),
    ProblemKind("service-mismatch", "service-mismatch", "Verwaltungsleistung inkonsistent", _N,
                "The metadata's publicServiceType (1.x) names another service than the submission's "
                "serviceType/publicService."),
    ProblemKind("unsupported-service", "unsupported-service", "Verwaltungsleistung nicht unterstützt", _N,
                "The submission's service is not one of the destination's services."),
    ProblemKind("unsupported-reply-channel", "unsupported-reply-channel", "Rückkanal nicht unterstützt", _M,
                "The metadata asks for a reply channel the destination does not offer (replyChannels)."),
    ProblemKind("attachments-mismatch", "attachments-mismatch", "Anlagen inkonsistent", _N,
                "The attachment ids of the metadata, of the submission (Submission.attachments) and of the "
                "event log's authenticationTags are not the same set."),
    ProblemKind("missing-data", "missing-data", "Fachdaten fehlen", _D,
                "The metadata declares data but the submission has none, or the other way round, or the "
                "submission has neither data nor attachments."),
    # -- data (§9.13, §9.19 - §9.21) ----------------------------------------------------------------
    ProblemKind("data-unsupported-schema", "unsupported-schema", "Schema nicht unterstützt", _D,
                "The data's submissionSchema (schemaUri + mimeType) is not offered by the destination for "
                "the service, or the gateway has no local copy of it (require_data_schemas = true)."),
    ProblemKind("data-hash-mismatch", "hash-mismatch", "Prüfsumme stimmt nicht", _D,
                "SHA-512 of the decrypted data differs from the metadata's data hash."),
    ProblemKind("data-syntax-violation", "syntax-violation", "Syntax-Fehler", _D,
                "The data is not parseable in its declared mime type (UTF-8 JSON; well-formed XML read by "
                "the hardened parser: no DTD, no entities, bounded size and depth)."),
    ProblemKind("data-schema-violation", "schema-violation", "Schema-Verletzung", _D,
                "The data violates its submission schema (JSON Schema 2020-12 or XSD)."),
    ProblemKind("data-too-large", "technical-error", "Technischer Fehler", _D,
                "The data (encrypted, or inflated from zip DEF) exceeds the gateway's size bound."),
    # -- attachments (§9.22 - §9.25) ----------------------------------------------------------------
    ProblemKind("attachment-hash-mismatch", "hash-mismatch", "Prüfsumme stimmt nicht", _A,
                "SHA-512 of a decrypted attachment differs from its hash in the metadata."),
    ProblemKind("attachment-too-large", "technical-error", "Technischer Fehler", _A,
                "An attachment (encrypted, or inflated from zip DEF) exceeds max_attachment_bytes / "
                "max_inflated_bytes."),
    # -- everything else ---------------------------------------------------------------------------
    ProblemKind("technical-error", "technical-error", "Technischer Fehler", _N,
                "The gateway refused the submission for a reason outside the FIT-Connect receipt checks: "
                "no route to a Fachverfahren, a validation plugin's finding, an operator's discard. The "
                "detail names the gateway's own problem type."),
)
# fmt: on


def kind(code: str) -> ProblemKind:
    """The catalogue entry for ``code`` (KeyError for an unknown code: a programming error)."""
    return CATALOGUE[code]


def problem(code: str, detail: str, *, attachment_id: str | None = None) -> Problem:
    return CATALOGUE[code].problem(detail, attachment_id=attachment_id)
