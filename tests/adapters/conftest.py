from __future__ import annotations

from pathlib import Path

import pytest

from adapters.blobdir import BlobDir


@pytest.fixture
def blobs(tmp_path: Path) -> BlobDir:
    return BlobDir(tmp_path / "blobs")
