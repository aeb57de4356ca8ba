"""XoevValidator: validation in warmed worker processes, bounded time, crash recovery, identification."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pluggy
import pytest
import pytest_asyncio

from gateway import hookspecs
from gateway.xoev import hookspecs as xoev_hookspecs
from gateway.xoev import standards
from gateway.xoev.config import XoevConfig
from gateway.xoev.decode import DecodeError
from gateway.xoev.parsing import XmlRejected
from gateway.xoev.validator import ValidationUnavailable, XoevValidator

pytestmark = [pytest.mark.timeout(180), pytest.mark.asyncio(loop_scope="module")]

SAMPLE = "xbeteiligung-1.2/samples/xmlv14/xbeteiligung-test-kommunal.Initiieren.0401.xml"


def plugin_hook() -> object:
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    pm.add_hookspecs(xoev_hookspecs)  # the XÖV channel's own hook
    pm.register(standards)
    return pm.hook


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def validator(xoev_config: XoevConfig) -> AsyncIterator[XoevValidator]:
    async with XoevValidator(xoev_config, hook=plugin_hook(), workers=2) as running:
        yield running


async def test_workers_start_warm(validator: XoevValidator) -> None:
    assert len(validator.worker_pids) == 2
    assert os.getpid() not in validator.worker_pids
    assert len(validator.ready_seconds) == 2


async def test_valid_message_is_identified_in_the_parent(validator: XoevValidator, xoev_shared: Path) -> None:
    outcome = await validator.validate_xml((xoev_shared / SAMPLE).read_bytes())
    assert outcome.valid
    assert outcome.engine == "lxml"
    assert outcome.bundle == "xbeteiligung-1.2"
    assert outcome.identity is not None
    assert outcome.identity.message_id == "60f6667b-fa45-4bd7-b717-f4d6c65e5edb"


async def test_invalid_message_reports_issues(validator: XoevValidator, xoev_shared: Path) -> None:
    data = (xoev_shared / SAMPLE).read_bytes().replace(b"2025-02-20T16:41:19.880Z", b"heute")
    outcome = await validator.validate_xml(data)
    assert not outcome.valid
    assert outcome.identity is None
    assert outcome.issues[0].path.endswith("erstellungszeitpunkt")
    assert outcome.issues[0].line == 19


async def test_hostile_input_is_rejected_across_the_process_boundary(validator: XoevValidator) -> None:
    with pytest.raises(XmlRejected) as info:
        await validator.validate_xml(b'<!DOCTYPE r [<!ENTITY a "b">]><r>&a;</r>')
    assert info.value.code == "doctype"


async def test_concurrent_validations(validator: XoevValidator, valid_samples: list[tuple[str, bytes]]) -> None:
    outcomes = await asyncio.gather(*(validator.validate_xml(data) for _, data in valid_samples))
    assert all(o.valid for o in outcomes)
    assert {o.identity.standard for o in outcomes if o.identity} == {"xdomea", "xbeteiligung", "xdatenfelder"}


async def test_decode_in_a_worker(validator: XoevValidator, xoev_shared: Path) -> None:
    decoded = await validator.decode_to_dict((xoev_shared / SAMPLE).read_bytes())
    assert list(decoded) == ["kommunal.Initiieren.0401"]
    with pytest.raises(DecodeError):
        await validator.decode_to_dict(b"<unbekannt/>")


async def test_validate_and_decode_in_one_round_trip(validator: XoevValidator, xoev_shared: Path) -> None:
    data = (xoev_shared / SAMPLE).read_bytes()
    outcome, decoded = await validator.validate_and_decode(data)
    assert outcome.valid
    assert outcome.identity is not None  # identified in the parent, as validate_xml does
    assert decoded == await validator.decode_to_dict(data)
    invalid, nothing = await validator.validate_and_decode(data.replace(b"2025-02-20T16:41:19.880Z", b"heute"))
    assert not invalid.valid
    assert nothing is None  # an invalid document is not decoded
    with pytest.raises(XmlRejected):
        await validator.validate_and_decode(b'<!DOCTYPE r [<!ENTITY a "b">]><r>&a;</r>')


async def test_a_dead_worker_is_replaced(validator: XoevValidator, xoev_shared: Path) -> None:
    victim = validator.worker_pids[0]
    os.kill(victim, signal.SIGKILL)  # a process this test session started
    data = (xoev_shared / SAMPLE).read_bytes()
    results = await asyncio.gather(*(validator.validate_xml(data) for _ in range(4)), return_exceptions=True)
    assert all(isinstance(r, ValidationUnavailable) or r.valid for r in results)  # type: ignore[union-attr]
    for _ in range(100):
        if victim not in validator.worker_pids and len(validator.worker_pids) == 2:
            break
        await asyncio.sleep(0.1)
    assert victim not in validator.worker_pids
    assert (await validator.validate_xml(data)).valid


async def test_timeout_kills_and_replaces_the_worker(xoev_config: XoevConfig) -> None:
    # ~450,000 elements: parsing alone takes far longer than the 50 ms bound in the worker
    huge = b"<r>" + b"<e/>" * 450_000 + b"</r>"
    async with XoevValidator(xoev_config, workers=1, timeout=0.05) as slow:
        (before,) = slow.worker_pids
        with pytest.raises(XmlRejected) as info:
            await slow.validate_xml(huge)
        assert info.value.code == "timeout"
        outcome = await slow.validate_xml(b"<klein/>")  # served by the replacement worker
        assert outcome.bundle is None
        (after,) = slow.worker_pids
        assert after != before


async def test_not_started() -> None:
    from gateway.xoev.config import parse_xoev_config

    unstarted = XoevValidator(parse_xoev_config({"cache_dir": False}, base_dir=Path("."), file="x"))
    with pytest.raises(ValidationUnavailable):
        await unstarted.validate_xml(b"<r/>")
