"""The built wheel (what the Docker image installs) holds every module, the bundled plugins' entry
points and the py.typed markers. An editable install would hide a missing subpackage."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build_wheel(project: Path, out: Path, pattern: str) -> Path:
    # setuptools builds in the source tree (build/); leave no copy of the sources behind for the
    # tests that scan the tree (log event names, layering) to find twice.
    leftover = not (project / "build").exists()
    try:
        return _build_wheel(project, out, pattern)
    finally:
        if leftover:
            shutil.rmtree(project / "build", ignore_errors=True)


def _build_wheel(project: Path, out: Path, pattern: str) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(project)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = out.glob(pattern)
    return wheel


def test_wheel_contains_every_module_and_entry_point(tmp_path: Path) -> None:
    wheel = build_wheel(ROOT, tmp_path, "ozg_gateway-*.whl")
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


def test_production_wheel_has_no_sandbox_sender_demo_or_test_kit(tmp_path: Path) -> None:
    """The Dockerfile installs the wheel of the repository root: the development companion stays out."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "sandbox" not in dockerfile.split("FROM", 2)[1], "the build stage must not copy the sandbox distribution"
    names = zipfile.ZipFile(build_wheel(ROOT, tmp_path, "ozg_gateway-*.whl")).namelist()
    offending = [
        n
        for n in names
        if n.startswith("gateway_sandbox/")
        or any(part in n for part in ("zustelldienst", "online_service", "sender", "demo", "testing"))
    ]
    assert not offending, offending


def test_sandbox_distribution_registers_its_commands_and_pytest_plugin(tmp_path: Path) -> None:
    wheel = build_wheel(ROOT / "sandbox", tmp_path, "ozg_gateway_sandbox-*.whl")
    archive = zipfile.ZipFile(wheel)
    names = set(archive.namelist())
    expected = {str(p.relative_to(ROOT / "sandbox")) for p in (ROOT / "sandbox" / "gateway_sandbox").rglob("*.py")}
    assert not sorted(expected - names)
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = archive.read(entry_points).decode()
    assert "sandbox = gateway_sandbox.plugin" in text
    assert "gateway = gateway_sandbox.testing" in text
