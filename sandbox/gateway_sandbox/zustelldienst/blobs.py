"""Encrypted submission contents on disk, and the incremental shape check for uploaded JWEs.

Attachments are streamed from the request to a temporary file next to their final place and
renamed when complete, so an aborted or refused upload never replaces an earlier good one and a
500 MB attachment never sits in memory. Layout: ``<root>/<submissionId>/{metadata,data}.jwe`` and
``<root>/<submissionId>/attachments/<attachmentId>.jwe``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from gateway.fitconnect.jose import JoseError, b64url_decode, parse_jwe

# OpenAPI 1.1.3: Attachment / SubmitSubmission pattern ^[a-zA-Z0-9-_=.]+$
_ALPHABET_RE = re.compile(rb"[A-Za-z0-9_=.\-]*")
JWE_PATTERN_RE = re.compile(r"^[a-zA-Z0-9-_=.]+$")
# Bounds for the small segments (header, encrypted key, iv, tag); the ciphertext is unbounded.
_MAX_SMALL_SEGMENT = 32 * 1024
CTY_VALUES = ("application/json", "application/xml")


class JWEShapeError(Exception):
    """``code`` is ``pattern`` (characters outside the allowed alphabet / empty), ``segments`` (not
    five non-empty dot-separated parts), ``profile`` (not RSA-OAEP-256/A256GCM with a 16-byte tag) or
    ``header`` (a v2 header rule: ``cty`` required, ``zip`` forbidden)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class JWEScanner:
    """Feeds a compact JWE chunk by chunk; keeps only the small segments."""

    def __init__(self, *, check_profile: bool, header_rules: tuple[str, ...] = ()) -> None:
        self.check_profile = check_profile
        self.header_rules = header_rules  # "cty": cty required; "no-zip": zip forbidden
        self.segments: list[bytearray] = [bytearray()]
        self.ciphertext_chars = 0
        self.size = 0

    def feed(self, chunk: bytes) -> None:
        if _ALPHABET_RE.fullmatch(chunk) is None:
            raise JWEShapeError("pattern", "body contains characters outside ^[a-zA-Z0-9-_=.]+$")
        self.size += len(chunk)
        for i, piece in enumerate(chunk.split(b".")):
            if i:
                if len(self.segments) == 5:
                    raise JWEShapeError("segments", "compact JWE has more than 5 segments")
                self.segments.append(bytearray())
            if len(self.segments) == 4:
                self.ciphertext_chars += len(piece)  # not kept: it may be hundreds of MB
                continue
            self.segments[-1] += piece
            if len(self.segments[-1]) > _MAX_SMALL_SEGMENT:
                raise JWEShapeError("segments", f"JWE segment {len(self.segments)} is implausibly large")

    def finish(self) -> str:
        """Check the whole; returns the authentication tag (5th segment)."""
        if self.size == 0:
            raise JWEShapeError("pattern", "body is empty")
        if len(self.segments) != 5:
            raise JWEShapeError("segments", f"compact JWE has {len(self.segments)} segments, expected 5")
        for i in (0, 1, 2, 4):
            if not self.segments[i]:
                raise JWEShapeError("segments", f"JWE segment {i + 1} is empty")
        if self.header_rules:
            self._check_header()
        if self.check_profile:
            if self.ciphertext_chars % 4 == 1:
                raise JWEShapeError("profile", "ciphertext has an impossible base64url length")
            skeleton = b".".join((self.segments[0], self.segments[1], self.segments[2], b"", self.segments[4]))
            try:
                parse_jwe(skeleton.decode("ascii"))
            except JoseError as exc:
                raise JWEShapeError("profile", f"{exc.code}: {exc.message}") from None
        return self.segments[4].decode("ascii")

    def _check_header(self) -> None:
        try:
            header = json.loads(b64url_decode(self.segments[0].decode("ascii"), what="protected header"))
        except (JoseError, ValueError):
            raise JWEShapeError("header", "Invalid JWE Header: not base64url-encoded JSON") from None
        if not isinstance(header, dict):
            raise JWEShapeError("header", "Invalid JWE Header: not a JSON object")
        if "no-zip" in self.header_rules and "zip" in header:
            raise JWEShapeError("header", "Invalid JWE Header 'zip': compression is not allowed")
        if "cty" in self.header_rules and header.get("cty") not in CTY_VALUES:
            raise JWEShapeError("header", f"Invalid JWE Header 'cty': must be one of {', '.join(CTY_VALUES)}")


def check_compact_jwe(value: str, *, check_profile: bool, header_rules: tuple[str, ...] = ()) -> str:
    """Shape check of an in-memory JWE (metadata, data); returns its authentication tag."""
    scanner = JWEScanner(check_profile=check_profile, header_rules=header_rules)
    try:
        scanner.feed(value.encode("ascii"))
    except UnicodeEncodeError:
        raise JWEShapeError("pattern", "JWE contains non-ASCII characters") from None
    return scanner.finish()


class BlobStore:
    def __init__(self, root: Path | None) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if root is None:
            # In-memory sandboxes still keep contents on disk: a 500 MB attachment never sits in RAM.
            self._tmp = tempfile.TemporaryDirectory(prefix="fitconnect-sandbox-")
            root = Path(self._tmp.name)
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _dir(self, submission_id: str) -> Path:
        return self.root / str(uuid.UUID(submission_id))

    def part_path(self, submission_id: str, part: str) -> Path:
        """``part`` is ``metadata``, ``data`` or ``attachment:<uuid>``."""
        if part.startswith("attachment:"):
            return self._dir(submission_id) / "attachments" / f"{uuid.UUID(part.split(':', 1)[1])}.jwe"
        if part not in ("metadata", "data"):
            raise ValueError(f"unknown part {part!r}")
        return self._dir(submission_id) / f"{part}.jwe"

    async def write_stream(
        self, submission_id: str, part: str, chunks: AsyncIterator[bytes], scanner: JWEScanner, limit: int
    ) -> tuple[int, str]:
        """Stream ``chunks`` into the part's file (atomically replaced); returns (size, auth tag).

        Raises :class:`PayloadTooLarge` past ``limit`` bytes and :class:`JWEShapeError` on a bad shape.
        """
        final = self.part_path(submission_id, part)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=final.parent, prefix=".upload-")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as fh:
                async for chunk in chunks:
                    if scanner.size + len(chunk) > limit:
                        raise PayloadTooLarge(limit)
                    scanner.feed(chunk)
                    fh.write(chunk)
            tag = scanner.finish()
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise
        return scanner.size, tag

    def write_text(self, submission_id: str, part: str, text: str) -> None:
        final = self.part_path(submission_id, part)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(final.name + ".tmp")
        tmp.write_text(text, encoding="ascii")
        os.replace(tmp, final)

    def read_text(self, submission_id: str, part: str) -> str:
        return self.part_path(submission_id, part).read_text(encoding="ascii")

    def exists(self, submission_id: str, part: str) -> bool:
        return self.part_path(submission_id, part).is_file()

    def delete_submission(self, submission_id: str) -> None:
        shutil.rmtree(self._dir(submission_id), ignore_errors=True)


class PayloadTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"body exceeds {limit} bytes")
        self.limit = limit
