"""On-disk cache of compiled bundles: ``<bundle>.json`` (index) + ``<bundle>-<key>.pickle`` (xmlschema).

The key is a SHA-256 over every file of the bundle's schema closure, the bundle configuration and
the versions of Python, xmlschema, elementpath, lxml and libxml2. A warm start only re-hashes the
closure files listed in the index (no XSD is parsed); a stale, corrupt or foreign entry is rebuilt
silently. The cache directory must be writable by the gateway only: pickles are trusted input.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import pickle
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import elementpath
import structlog
import xmlschema
from lxml import etree

from gateway.xoev.closure import file_digests
from gateway.xoev.config import BundleConfig

log = structlog.get_logger(__name__)

CACHE_FORMAT = 1


def toolchain() -> dict[str, str]:
    return {
        "format": str(CACHE_FORMAT),
        "python": f"{sys.version_info[0]}.{sys.version_info[1]}",
        "xmlschema": xmlschema.__version__,
        "elementpath": elementpath.__version__,
        "lxml": ".".join(map(str, etree.LXML_VERSION)),
        "libxml2": ".".join(map(str, etree.LIBXML_VERSION)),
    }


def bundle_fingerprint(bundle: BundleConfig) -> dict[str, Any]:
    """Everything of the configuration that changes what gets compiled."""
    return {
        "name": bundle.name,
        "dir": str(bundle.dir),
        "entries": list(bundle.entries),
        "locations": {url: str(path) for url, path in sorted(bundle.locations.items())},
        "toolchain": toolchain(),
    }


def cache_key(fingerprint: dict[str, Any], digests: list[tuple[str, str]], missing: list[str]) -> str:
    payload = json.dumps({"config": fingerprint, "files": digests, "missing": missing}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class CachedIndex:
    key: str
    entries: list[dict[str, Any]]  # [{"entry", "namespace", "roots"}]
    pickle_file: str
    pickle_sha256: str


class BundleCache:
    def __init__(self, cache_dir: Path) -> None:
        self.dir = cache_dir

    def index_path(self, bundle: BundleConfig) -> Path:
        return self.dir / f"{bundle.name}.json"

    def lookup(self, bundle: BundleConfig, memo: dict[Path, str]) -> CachedIndex | None:
        """The cached index if it is still valid for the current files and toolchain, else None."""
        try:
            raw = json.loads(self.index_path(bundle).read_text("utf-8"))
            if raw.get("fingerprint") != bundle_fingerprint(bundle):
                return None
            files = [Path(p) for p, _ in raw["files"]]
            missing = [str(m) for m in raw["missing"]]
            if any(Path(m).exists() for m in missing):
                return None  # a file that was missing at build time appeared: the closure changed
            digests = file_digests(files, memo)
            if [list(d) for d in digests] != raw["files"]:
                return None
            key = cache_key(raw["fingerprint"], digests, missing)
            if key != raw["key"]:
                return None
            pickle_file = str(raw["pickle_file"])
            if not (self.dir / pickle_file).is_file():
                return None
            return CachedIndex(key, list(raw["entries"]), pickle_file, str(raw["pickle_sha256"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.info("xoev_cache_index_unusable", bundle=bundle.name, error=type(exc).__name__)
            return None

    def store(
        self,
        bundle: BundleConfig,
        *,
        key: str,
        digests: list[tuple[str, str]],
        missing: list[str],
        entries: list[dict[str, Any]],
        schema: Any,
    ) -> CachedIndex:
        self.dir.mkdir(parents=True, exist_ok=True)
        blob = pickle.dumps(schema, protocol=pickle.HIGHEST_PROTOCOL)
        pickle_file = f"{bundle.name}-{key[:16]}.pickle"
        _atomic_write(self.dir / pickle_file, blob)
        blob_sha256 = hashlib.sha256(blob).hexdigest()
        index = {
            "fingerprint": bundle_fingerprint(bundle),
            "key": key,
            "files": [list(d) for d in digests],
            "missing": missing,
            "entries": entries,
            "pickle_file": pickle_file,
            "pickle_sha256": blob_sha256,
        }
        _atomic_write(self.index_path(bundle), json.dumps(index, indent=1).encode())
        for old in self.dir.glob(f"{bundle.name}-*.pickle"):
            if old.name != pickle_file:
                with contextlib.suppress(OSError):
                    old.unlink()
        return CachedIndex(key, entries, pickle_file, blob_sha256)

    def load_schema(self, index: CachedIndex) -> Any | None:
        """Unpickle the compiled schema; None if the file is corrupt or does not match the index."""
        try:
            blob = (self.dir / index.pickle_file).read_bytes()
        except OSError:
            return None
        if hashlib.sha256(blob).hexdigest() != index.pickle_sha256:
            return None
        # The object graph is large and acyclic-heavy: a collector pass per allocation batch doubles
        # the load time, so the collector pauses while unpickling.
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return pickle.loads(blob)  # noqa: S301 - our own cache file, verified by digest
        except Exception as exc:  # any unpickling failure means: rebuild
            log.info("xoev_cache_pickle_unusable", file=index.pickle_file, error=type(exc).__name__)
            return None
        finally:
            if was_enabled:
                gc.enable()


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
