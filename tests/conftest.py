from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from loopback_server import Loopback, serve_loopback

REPO_ROOT = Path(__file__).resolve().parent.parent


def find_shared_dir() -> Path | None:
    """The reference material folder (``../shared`` beside the checkout), if present."""
    env = os.environ.get("GATEWAY_SHARED_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT.parent / "shared")
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return None


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    found = find_shared_dir()
    if found is None:
        pytest.skip("reference material ../shared is absent (set GATEWAY_SHARED_DIR to run this test)")
    return found


@pytest.fixture(scope="session")
def fitconnect_shared(shared_dir: Path) -> Path:
    path = shared_dir / "fitconnect"
    if not path.is_dir():
        pytest.skip(f"{path} is absent")
    return path


@pytest.fixture(scope="session")
def xoev_shared(shared_dir: Path) -> Path:
    path = shared_dir / "xoev"
    if not path.is_dir():
        pytest.skip(f"{path} is absent")
    return path


@pytest.fixture
def loopback() -> Iterator[Loopback]:
    """A loopback HTTP server counting requests: hostile-input tests assert it was never contacted."""
    with serve_loopback() as server:
        yield server
