"""`gateway demo` (README's first command) runs the whole FIT-Connect path and checks its own result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.shared
def test_demo_delivers_accepts_and_rejects(
    tmp_path: Path, fitconnect_shared: Path, xoev_shared: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workdir = tmp_path / "demo"
    code = main(
        [
            "demo",
            "--config",
            str(ROOT / "gateway.toml"),
            "--sandbox-config",
            str(ROOT / "certs/example/sandbox.toml"),
            "--workdir",
            str(workdir),
            "--timeout",
            "120",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.count("expected:           accept-submission → OK") == 2
    assert out.count("expected:           reject-submission → OK") == 1
    manifests = sorted((workdir / "fachverfahren").glob("*/*/manifest.json"))
    assert len(manifests) == 2
    for manifest_path in manifests:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        for entry in manifest["files"]:
            assert (manifest_path.parent / entry["file"]).stat().st_size == entry["size"]


def test_demo_refuses_a_foreign_workdir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "precious.txt").write_text("not the demo's")
    code = main(["demo", "--config", str(ROOT / "gateway.toml"), "--workdir", str(tmp_path)])
    assert code == 2
    assert "was not created by `gateway demo`" in capsys.readouterr().err
    assert (tmp_path / "precious.txt").exists()
