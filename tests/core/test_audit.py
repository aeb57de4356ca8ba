"""The hash-chained audit trail: intact chains verify; edits, deletions and reordering by someone
with file access (who drops the append-only triggers first) are found and the first broken seq named."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from core.storehelp import message_in
from core.support import run_cli, write_config
from gateway.model import MessageState
from gateway.store.base import GENESIS_HASH, audit_hash
from gateway.store.sqlite import SQLiteStore


async def populated(tmp_path: Path) -> tuple[Path, list[str]]:
    """A store file with three messages and 10 audit records; returns (db, ids)."""
    db = tmp_path / "var" / "gateway.db"
    store = SQLiteStore(db)
    await store.open()
    ids = [
        (await message_in(store, MessageState.ACKNOWLEDGED)).envelope.id,  # 5 records
        (await message_in(store, MessageState.REJECTED)).envelope.id,  # 2 records
        (await message_in(store, MessageState.FAILED)).envelope.id,  # 4 records (received, validated, routed, failed)
    ]
    await store.note(ids[0], event="operator", reason="looked at it", actor="cli:test", details={"n": 1})
    assert (await store.verify_audit()).checked == 12
    await store.close()
    return db, ids


def raw(db: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DROP TRIGGER audit_no_update")  # an attacker with file access can do this
    conn.execute("DROP TRIGGER audit_no_delete")
    return conn


async def verify(db: Path) -> tuple[bool, int | None, str]:
    store = SQLiteStore(db)
    await store.open()
    try:
        result = await store.verify_audit()
    finally:
        await store.close()
    return result.ok, result.broken_seq, result.reason


async def cli_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    config = write_config(tmp_path, "")  # defaults: var/gateway.db beside the file
    rc = await run_cli(["audit", "--config", str(config), "verify"])
    out, err = capsys.readouterr()
    return rc, out, err


async def test_intact_chain_verifies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db, ids = await populated(tmp_path)
    assert await verify(db) == (True, None, "")
    assert await cli_verify(tmp_path, capsys) == (0, "audit chain intact: 12 record(s)\n", "")
    store = SQLiteStore(db)
    await store.open()
    trail = await store.audit_trail(ids[0])
    await store.close()
    assert [r.seq for r in trail] == [1, 2, 3, 4, 5, 12]
    assert trail[0].prev_hash == GENESIS_HASH
    assert [(r.from_state, r.to_state) for r in trail[:5]] == [
        (None, "received"),
        ("received", "validated"),
        ("validated", "routed"),
        ("routed", "delivered"),
        ("delivered", "acknowledged"),
    ]
    assert trail[-1].event == "operator"
    assert trail[-1].details == {"n": 1}


def _edit_reason(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE audit SET reason = 'nothing to see' WHERE seq = 7")


def _edit_details(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE audit SET details = ? WHERE seq = 7", (json.dumps({"channel": "forged"}),))


def _edit_and_rehash(conn: sqlite3.Connection) -> None:
    # A careful attacker recomputes the edited record's own hash: the next record's link breaks.
    row = conn.execute("SELECT * FROM audit WHERE seq = 7").fetchone()
    names = [d[0] for d in conn.execute("SELECT * FROM audit LIMIT 0").description]
    rec = dict(zip(names, row, strict=True))
    digest = audit_hash(
        rec["prev_hash"],
        seq=7,
        message_id=rec["message_id"],
        at=rec["at"],
        event=rec["event"],
        from_state=rec["from_state"],
        to_state="acknowledged",
        reason=rec["reason"],
        actor=rec["actor"],
        details=json.loads(rec["details"]),
    )
    conn.execute("UPDATE audit SET to_state = 'acknowledged', hash = ? WHERE seq = 7", (digest,))


def _delete_middle(conn: sqlite3.Connection) -> None:
    conn.execute("DELETE FROM audit WHERE seq = 7")


def _delete_first(conn: sqlite3.Connection) -> None:
    conn.execute("DELETE FROM audit WHERE seq = 1")


def _reorder(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE audit SET seq = -1 WHERE seq = 7")
    conn.execute("UPDATE audit SET seq = 7 WHERE seq = 8")
    conn.execute("UPDATE audit SET seq = 8 WHERE seq = -1")


def _delete_tail(conn: sqlite3.Connection) -> None:
    # The newest records carry no successor whose link could break: only the audit head notices.
    conn.execute("DELETE FROM audit WHERE seq >= 11")


def _append_forged(conn: sqlite3.Connection) -> None:
    # A forged record appended with a correct link and hash, but without moving the head.
    last = conn.execute("SELECT seq, hash, message_id FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    fields = {
        "seq": last[0] + 1,
        "message_id": last[2],
        "at": 1.0,
        "event": "operator",
        "from_state": "failed",
        "to_state": "failed",
        "reason": "forged",
        "actor": "x",
        "details": {},
    }
    digest = audit_hash(last[1], **fields)  # type: ignore[arg-type]
    conn.execute(
        "INSERT INTO audit (seq, message_id, at, event, from_state, to_state, reason, actor, details, prev_hash, hash)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (*[fields[k] if k != "details" else "{}" for k in fields], last[1], digest),
    )


def _edit_time(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE audit SET at = at - 3600 WHERE seq = 9")


@pytest.mark.parametrize(
    ("tamper", "broken", "reason"),
    [
        (_edit_reason, 7, "record content does not match its hash"),
        (_edit_details, 7, "record content does not match its hash"),
        (_edit_time, 9, "record content does not match its hash"),
        (_edit_and_rehash, 8, "prev_hash does not link to the previous record"),
        (_delete_middle, 8, "record(s) missing before seq 8"),
        (_delete_first, 2, "the chain does not start at seq 1"),
        (_reorder, 7, "prev_hash does not link to the previous record"),
        (
            _delete_tail,
            11,
            "the audit head (seq 12) does not match the last record (seq 10): "
            "records were removed or added outside the store",
        ),
        (
            _append_forged,
            13,
            "the audit head (seq 12) does not match the last record (seq 13): "
            "records were removed or added outside the store",
        ),
    ],
    ids=["reason", "details", "time", "rehash", "delete", "delete-first", "reorder", "delete-tail", "append"],
)
async def test_tampering_is_detected(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    tamper: Callable[[sqlite3.Connection], None],
    broken: int,
    reason: str,
) -> None:
    db, _ids = await populated(tmp_path)
    conn = raw(db)
    tamper(conn)
    conn.close()
    assert await verify(db) == (False, broken, reason)
    rc, out, err = await cli_verify(tmp_path, capsys)
    assert rc == 1
    assert out == ""
    assert err == f"audit chain BROKEN at seq {broken}: {reason}\n"


async def test_triggers_refuse_update_and_delete(tmp_path: Path) -> None:
    db, _ids = await populated(tmp_path)
    conn = sqlite3.connect(db, isolation_level=None)
    with pytest.raises(sqlite3.DatabaseError, match="audit is append-only"):
        conn.execute("UPDATE audit SET reason = 'x' WHERE seq = 1")
    with pytest.raises(sqlite3.DatabaseError, match="audit is append-only"):
        conn.execute("DELETE FROM audit WHERE seq = 1")
    conn.close()
    assert await verify(db) == (True, None, "")


async def test_cli_audit_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _db, ids = await populated(tmp_path)
    config = write_config(tmp_path, "")
    assert await run_cli(["audit", "--config", str(config), "show", ids[1]]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["from"], r["to"]) for r in lines] == [(None, "received"), ("received", "rejected")]
    assert {r["message_id"] for r in lines} == {ids[1]}
    assert all(len(r["hash"]) == 64 for r in lines)


async def test_audit_head_is_initialised_when_an_old_database_is_upgraded(tmp_path: Path) -> None:
    db, ids = await populated(tmp_path)
    conn = sqlite3.connect(db, isolation_level=None)  # back to schema version 1 (no audit head), data kept
    conn.execute("DROP TRIGGER audit_head_no_delete")
    conn.execute("DROP TABLE audit_head")
    conn.execute("DROP TABLE answers")  # what migration 3 added
    conn.execute("DROP TABLE health")
    conn.execute("ALTER TABLE messages DROP COLUMN reply")
    conn.execute("DELETE FROM schema_migrations WHERE version > 1")
    conn.close()
    store = SQLiteStore(db)
    await store.open()
    try:
        assert await store.schema_version() >= 2
        assert (await store.verify_audit()).ok
        await store.note(ids[2], event="operator", reason="after upgrade", actor="t")
        result = await store.verify_audit()
        assert result.ok
        assert result.checked == 13
    finally:
        await store.close()


async def test_audit_head_only_moves_forward(tmp_path: Path) -> None:
    db, _ids = await populated(tmp_path)
    conn = sqlite3.connect(db, isolation_level=None)
    with pytest.raises(sqlite3.DatabaseError, match="only moves forward"):
        conn.execute("UPDATE audit_head SET seq = 10")
    with pytest.raises(sqlite3.DatabaseError, match="only moves forward"):
        conn.execute("DELETE FROM audit_head")
    conn.close()
