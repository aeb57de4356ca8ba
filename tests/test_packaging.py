"""The built wheel (what the Docker image installs) holds every module, the bundled plugins' entry
points and the py.typed markers. An editable install would hide a missing subpackage."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_contains_every_module_and_entry_point(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("ozg_gateway-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {str(p.relative_to(ROOT)) for p in (ROOT / "gateway").rglob("*.py")}
    expected |= {str(p.relative_to(ROOT / "plugins")) for p in (ROOT / "plugins").rglob("*.py")}
    missing = sorted(expected - names)
    assert not missing, f"modules missing from the wheel: {missing[:10]}"
    assert {"gateway/py.typed", "gateway_filesystem/py.typed", "gateway_webhook/py.typed"} <= names
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[gateway]" in text
    assert "filesystem = gateway_filesystem" in text
    assert "webhook = gateway_webhook" in text
    assert "gateway = gateway.cli:main" in text
