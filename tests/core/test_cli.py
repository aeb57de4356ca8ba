"""The ``gateway`` command line: store-backed admin commands, and the installed console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.storehelp import message_in
from core.support import run_cli, write_config
from gateway import __version__
from gateway.cli import main
from gateway.model import AckState, MessageState
from gateway.store.sqlite import MIGRATIONS, SQLiteStore

CONFIG = '[store]\npath = "state/gw.db"\n'


async def test_db_upgrade_creates_and_reports_the_schema(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(write_config(tmp_path, CONFIG))
    assert not (tmp_path / "state" / "gw.db").exists()
    for _ in range(2):  # idempotent
        assert await run_cli(["db", "--config", path, "upgrade"]) == 0
        assert capsys.readouterr().out == f"database schema at version {len(MIGRATIONS)}\n"
    assert (tmp_path / "state" / "gw.db").is_file()


async def test_dead_letters_list_empty(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(write_config(tmp_path, CONFIG))
    assert await run_cli(["dead-letters", "--config", path, "list"]) == 0
    assert capsys.readouterr().out == "0 dead letter(s)\n"


async def test_discarding_an_accepted_application_needs_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(write_config(tmp_path, CONFIG))
    store = SQLiteStore(tmp_path / "state" / "gw.db")
    await store.open()
    accepted = await message_in(store, MessageState.DEAD, ack=AckState.DONE)  # told upstream "accepted"
    waiting = await message_in(store, MessageState.DEAD, ack=AckState.WAITING)
    alive = await message_in(store, MessageState.ROUTED)
    await store.close()
    mid = accepted.envelope.id

    assert await run_cli(["dead-letters", "--config", path, "list", "--limit", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "1 dead letter(s)"
    assert await run_cli(["dead-letters", "--config", path, "discard", mid]) == 1
    assert "already told it was accepted" in capsys.readouterr().err
    assert await run_cli(["dead-letters", "--config", path, "discard", "--force", mid]) == 0
    capsys.readouterr()
    assert await run_cli(["dead-letters", "--config", path, "discard", waiting.envelope.id]) == 0
    assert await run_cli(["dead-letters", "--config", path, "discard", alive.envelope.id]) == 1
    assert "is routed, not dead" in capsys.readouterr().err

    assert await run_cli(["dead-letters", "--config", path, "show", waiting.envelope.id]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["state"] == "rejected"
    assert shown["ack"] == "pending"
    assert shown["audit"][-1]["reason"] == "operator discard"
    assert shown["audit"][-1]["actor"].startswith("cli:")
    assert await run_cli(["audit", "--config", path, "verify"]) == 0


def test_missing_config_is_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dead-letters", "--config", str(tmp_path / "nope.toml"), "list"]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'nope.toml'}: file not found\n"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"gateway {__version__}\n"


def test_console_script(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "gateway"
    assert script.is_file(), "the project is not installed (pip install -e .)"
    good = write_config(
        tmp_path, '[adapters.fv]\ntype = "filesystem"\ndirectory = "out"\n[[routes]]\nname = "all"\nadapter = "fv"\n'
    )
    bad = write_config(tmp_path, "[http]\nport = true\n", name="bad.toml")
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_CONFIG"} | {"GATEWAY_CONFIG": str(good)}
    ok = subprocess.run([str(script), "check-config"], capture_output=True, text=True, env=env, timeout=60)
    assert (ok.returncode, ok.stdout.strip()) == (0, f"{good}: ok (0 sources, 1 adapters, 1 routes)")
    fail = subprocess.run([str(script), "check-config", str(bad)], capture_output=True, text=True, env=env, timeout=60)
    assert fail.returncode == 2
    assert fail.stdout == ""
    assert fail.stderr == f"error: {bad}: http.port: expected int, got bool\n"
    route = subprocess.run(
        [str(script), "route", "--explain", "service=x"], capture_output=True, text=True, env=env, timeout=60
    )
    assert route.returncode == 0
    assert route.stdout.splitlines() == [
        "1. all: MATCH → adapter fv",
        "=> route 'all' → adapter 'fv' (rule 'all' matches)",
    ]


@pytest.mark.parametrize("command", ["demo", "sandbox"])
def test_sandbox_commands_say_how_to_install_the_companion_when_absent(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.cli import build_parser
    from gateway.plugins import PluginHost

    args = build_parser(PluginHost.load(entry_points_enabled=False)).parse_args([command])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert "ozg-gateway-sandbox" in err
    assert "pip install -e ./sandbox" in err


def test_sandbox_commands_come_from_the_installed_companion() -> None:
    from gateway.cli import _sandbox_missing, build_parser
    from gateway.plugins import PluginHost

    parser = build_parser(PluginHost.load())
    for command in ("demo", "sandbox"):
        assert parser.parse_args([command]).func is not _sandbox_missing
