"""Turning an untrusted sender file name into one that is safe on Linux, macOS and Windows shares.

The sender's name is only a hint: whatever it contains, the result is a single path component
that cannot escape the target directory, is not hidden, not a device name, and fits every
common filesystem's 255-byte limit (with room for a collision suffix).
"""

from __future__ import annotations

import unicodedata

# Characters Windows refuses in names, plus both separators.
_FORBIDDEN = frozenset('<>:"/\\|?*')
# Unicode categories that never belong in a file name: controls, format characters (e.g. the
# right-to-left override used to disguise extensions), surrogates, private use, unassigned,
# and line/paragraph separators.
_DROP_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_WINDOWS_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"} | {f"{dev}{n}" for dev in ("COM", "LPT") for n in "0123456789¹²³"}
)
# Confusables of "/" and "\\" (Unicode confusables.txt) that NFKC leaves alone: symbols and
# punctuation only. Letters on that list (KATAKANA NO, CJK 丿/丶, Coptic esh) belong to real
# words and stay; FULLWIDTH/SMALL solidi fold to "/" "\\" under NFKC and are caught below.
SLASH_LOOKALIKES = frozenset(
    "\u2044\u2215\u29f8\u2571\u27cb\u1735\u2041\u31d3\u2f03\U0001d23a\U0001f67c"  # like "/"
    "\u2216\u29f5\u29f9\u27cd\u2572\u31d4\u2f02\U0001f67d"  # like "\\"
)
MAX_NAME_BYTES = 200  # well below 255, leaving room for "-<n>" suffixes
MAX_EXTENSION_CHARS = 16


def _clean_char(ch: str) -> str:
    if unicodedata.category(ch) in _DROP_CATEGORIES:
        return ""
    if ch in _FORBIDDEN or ch in SLASH_LOOKALIKES:
        return "_"
    if ch.isspace():
        return " "
    if not ch.isascii():
        # Look-alikes such as FULLWIDTH SOLIDUS or ONE DOT LEADER are harmless here but may be
        # "best-fit" mapped to "/" or "." by Windows ANSI APIs on the Fachverfahren's side.
        folded = unicodedata.normalize("NFKC", ch)
        if folded != ch and any(c in _FORBIDDEN or c == "." for c in folded):
            return "_"
    return ch


def _truncate_utf8(text: str, max_bytes: int) -> str:
    encoded = text.encode("utf-8")
    if len(encoded) <= max_bytes:
        return text
    return encoded[:max_bytes].decode("utf-8", errors="ignore")


def split_extension(name: str) -> tuple[str, str]:
    """``("report", ".pdf")``; an "extension" that is long or odd stays part of the stem."""
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem or len(ext) > MAX_EXTENSION_CHARS or not ext.isalnum():
        return name, ""
    return stem, "." + ext


def sanitize_filename(raw: str | None) -> str | None:
    """A safe single path component derived from ``raw``, or ``None`` if nothing usable is left."""
    if not raw:
        return None
    name = unicodedata.normalize("NFC", raw).replace("\\", "/")
    name = name.rsplit("/", 1)[-1]  # drop directory parts, including absolute and UNC prefixes
    if len(name) >= 2 and name[1] == ":" and name[0].isascii() and name[0].isalpha():
        name = name[2:]  # drive-relative "C:name"
    name = "".join(_clean_char(ch) for ch in name)
    name = " ".join(name.split())  # collapse runs of whitespace
    # Leading dots make hidden files (and ".."); Windows silently drops trailing dots and spaces.
    name = unicodedata.normalize("NFC", name).strip(" .")
    if not name:
        return None
    stem, ext = split_extension(name)
    if stem.split(".", 1)[0].rstrip(" ").upper() in _WINDOWS_RESERVED:
        stem = "_" + stem
    stem = _truncate_utf8(stem, MAX_NAME_BYTES - len(ext.encode("utf-8"))).rstrip(" .")
    if not stem:
        return None
    return stem + ext


_EXTENSIONS = {
    "application/pdf": ".pdf",
    "application/xml": ".xml",
    "text/xml": ".xml",
    "application/json": ".json",
    "text/plain": ".txt",
    "text/csv": ".csv",
    "text/html": ".html",
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/tiff": ".tif",
    "image/gif": ".gif",
    "application/zip": ".zip",
    "application/pkcs7-signature": ".p7s",
    "application/pkcs7-mime": ".p7m",
    "application/vnd.oasis.opendocument.text": ".odt",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": ".docx",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": ".xlsx",
    "application/msword": ".doc",
}


def _essence(media_type: str) -> str:
    return media_type.split(";", 1)[0].strip().lower()


def extension_for(media_type: str) -> str:
    """A file extension for a media type (a fixed table, so names do not depend on the host)."""
    essence = _essence(media_type)
    if essence in _EXTENSIONS:
        return _EXTENSIONS[essence]
    if essence.endswith("+xml"):
        return ".xml"
    if essence.endswith("+json"):
        return ".json"
    return ".bin"


def data_filename(media_type: str) -> str:
    """``data.json``, ``data.xml`` or ``data.bin`` for the data part."""
    ext = extension_for(media_type)
    return "data" + (ext if ext in (".json", ".xml") else ".bin")


class NameAllocator:
    """Hands out unique names within one directory; comparison ignores case (Windows/macOS shares)."""

    def __init__(self, reserved: tuple[str, ...] = ()) -> None:
        self._taken: set[str] = {self._key(n) for n in reserved}

    @staticmethod
    def _key(name: str) -> str:
        return unicodedata.normalize("NFC", name).casefold()

    def allocate(self, name: str) -> str:
        candidate = name
        stem, ext = split_extension(name)
        counter = 1
        while self._key(candidate) in self._taken:
            counter += 1
            candidate = f"{stem}-{counter}{ext}"
        self._taken.add(self._key(candidate))
        return candidate
