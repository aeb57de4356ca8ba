"""Logs never carry personal data: marker strings pushed through every path a payload, a file name,
an adapter's failure text or an exception message can take must not reach the JSON log."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

import gateway_filesystem
from core.support import FakeSourcePlugin, ScriptedPlugin, incoming, write_config
from gateway.adapters.base import Delivery, DeliveryResult
from gateway.config import load_config
from gateway.logs import REDACTED, GatewayLogHandler, configure_logging
from gateway.model import MessageState, RoutingKeys
from gateway.plugins import PluginHost
from gateway.runtime import build_runtime
from gateway.sources.base import AckResult

NAME = "Erika Mustermann"
IBAN = "DE89370400440532013000"
TOKEN = "tok_9f8e7d6c5b4a39281706"
MARKERS = (NAME, IBAN, TOKEN, "Mustermann", "370400440532013000")

CONFIG = """
[delivery]
poll_interval = 0.05

[retry.default]
max_attempts = 2
initial_delay = 0.01
max_delay = 0.01

[adapters.files]
type = "filesystem"
directory = "out"

[adapters.flaky]
type = "scripted"

[sources.fit]
type = "fake"

[[routes]]
name = "to-files"
adapter = "files"
[routes.match]
service = "urn:files"

[[routes]]
name = "to-flaky"
adapter = "flaky"
"""


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging(format="json", level="debug", stream=stream)
    yield stream
    reset_logging()


def reset_logging() -> None:
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, GatewayLogHandler)]:
        root.removeHandler(handler)


def parsed_lines(stream: io.StringIO) -> list[dict[str, object]]:
    text = stream.getvalue()
    lines = text.splitlines()
    assert lines, "nothing was logged"
    return [json.loads(line) for line in lines]  # every line is one JSON object


def assert_clean(stream: io.StringIO) -> list[dict[str, object]]:
    text = stream.getvalue()
    for marker in MARKERS:
        assert marker not in text, f"marker {marker!r} leaked into the log"
    return parsed_lines(stream)


async def test_markers_never_reach_the_log(tmp_path: Path, log_stream: io.StringIO) -> None:
    scripted, sources = ScriptedPlugin(), FakeSourcePlugin()
    host = PluginHost.load(entry_points_enabled=False, extra=[gateway_filesystem, scripted, sources])
    runtime = build_runtime(load_config(write_config(tmp_path, CONFIG)), plugins=host)
    flaky = scripted.instances["flaky"]
    fit = sources.instances["fit"]

    async def raising(_d: Delivery) -> DeliveryResult:
        secret_local = f"{NAME} {IBAN}"  # a local variable that must not be rendered
        raise ValueError(f"could not map applicant {secret_local} with token {TOKEN}")

    flaky.script = [raising, DeliveryResult.permanent(f"Fachverfahren refused {NAME}, IBAN {IBAN}")]
    fit.script = [AckResult(False, f"upstream said: {NAME} unknown"), RuntimeError(f"SET for {IBAN} failed")]

    runtime.blobs.open()
    await runtime.store.open()
    try:
        metadata = {"applicant": NAME, "iban": IBAN, "auth": TOKEN}
        data = await runtime.blobs.write_bytes(f"<antrag><name>{NAME}</name></antrag>".encode(), name="data")
        attachment = await runtime.blobs.write_bytes(
            f"Kontoauszug {IBAN}".encode(), name="attachment:1", filename=f"{NAME} - {IBAN}.pdf"
        )
        to_files = incoming(
            "fit",
            f"ref-{TOKEN[:3]}",
            routing=RoutingKeys(service="urn:files"),
            metadata=metadata,
            data=data,
            attachments=[attachment],
            needs_ack=True,
        )
        to_flaky = incoming("fit", routing=RoutingKeys(service="urn:other"), metadata=metadata, needs_ack=True)
        files_id = (await runtime.intake.receive(to_files)).message.envelope.id
        flaky_id = (await runtime.intake.receive(to_flaky)).message.envelope.id
        await runtime.intake.receive(to_files)  # a duplicate
        await runtime.worker.deliver_once()  # files: delivered; flaky: raises -> failed
        await asyncio.sleep(0.02)  # longer than the largest backoff (max_delay = 0.01)
        await runtime.worker.deliver_once()  # flaky: permanent -> dead
        ticks = itertools.count(1)
        runtime.acker.clock = lambda: time.time() + 10_000 * next(ticks)  # every ack retry is due at once
        for _ in range(3):  # files: not done, raises, done
            await runtime.acker.ack_once()
        assert (await runtime.store.get(files_id)).envelope.state is MessageState.ACKNOWLEDGED  # type: ignore[union-attr]
        assert (await runtime.store.get(flaky_id)).envelope.state is MessageState.DEAD  # type: ignore[union-attr]
        delivered = (tmp_path / "out" / files_id).iterdir()
        assert any(NAME in p.name for p in delivered)  # the file name really went through the adapter
    finally:
        await runtime.store.close()

    lines = assert_clean(log_stream)
    events = [line["event"] for line in lines]
    for expected in (
        "message_received",
        "duplicate_received",
        "message_routed",
        "adapter_raised",
        "delivery_attempt",
        "message_dead",
        "ack_raised",
        "ack_attempt",
    ):
        assert expected in events, expected
    raised = next(line for line in lines if line["event"] == "adapter_raised")
    assert raised["error_type"] == "builtins.ValueError"
    assert any("raising" in frame for frame in raised["frames"])  # type: ignore[union-attr]


def test_allow_list_redacts_unknown_keys(log_stream: io.StringIO) -> None:
    log = structlog.get_logger("test")
    log.info("checked", message_id="m-1", applicant=NAME, payload={"iban": IBAN}, count=3)
    (line,) = assert_clean(log_stream)
    assert line["applicant"] == REDACTED
    assert line["payload"] == REDACTED
    assert (line["message_id"], line["count"], line["event"], line["level"]) == ("m-1", 3, "checked", "info")
    assert "timestamp" in line


def test_bound_context_is_filtered_too(log_stream: io.StringIO) -> None:
    log = structlog.get_logger("test").bind(applicant=NAME)
    with structlog.contextvars.bound_contextvars(iban=IBAN, route="r1"):
        log.warning("something")
    (line,) = assert_clean(log_stream)
    assert line["applicant"] == REDACTED
    assert line["iban"] == REDACTED
    assert line["route"] == "r1"


def test_tracebacks_have_no_locals_and_no_message(log_stream: io.StringIO) -> None:
    log = structlog.get_logger("test")

    def parse(applicant: str) -> None:
        iban = IBAN  # noqa: F841  (a local that must not be shown)
        raise KeyError(f"{applicant} has no account {TOKEN}")

    try:
        parse(NAME)
    except KeyError:
        log.exception("parse_failed")
    try:
        parse(NAME)
    except KeyError as exc:
        log.error("parse_failed_again", exc_info=exc)
    first, second = assert_clean(log_stream)
    for line in (first, second):
        assert line["error_type"] == "builtins.KeyError"
        assert "exception" not in line
        assert line["frames"][-1].endswith(":parse")  # type: ignore[index]
        assert all(str(f).count(":") >= 2 for f in line["frames"])  # type: ignore[union-attr]


def test_debug_level_is_filtered_at_info(tmp_path: Path) -> None:
    stream = io.StringIO()
    configure_logging(format="json", level="info", stream=stream)
    try:
        structlog.get_logger("test").debug("noise")
        structlog.get_logger("test").info("signal")
    finally:
        reset_logging()
    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == ["signal"]


def test_stdlib_logging_goes_through_the_same_filters(log_stream: io.StringIO) -> None:
    # Libraries (aiohttp, asyncio, ...) log through the standard library: same stream, same rules.
    logging.getLogger("somelib").warning("lookup failed for %s", NAME)
    try:
        raise ValueError(f"bad IBAN {IBAN}")
    except ValueError:
        logging.getLogger("aiohttp.server").exception("Error handling request")
    logging.getLogger("asyncio").error(
        f"Task exception was never retrieved\nfuture: <Task finished exception=ValueError('{NAME}')>"
    )
    lines = assert_clean(log_stream)
    assert [(line["event"], line["logger"], line["level"]) for line in lines] == [
        ("lookup failed for %s", "somelib", "warning"),
        ("Error handling request", "aiohttp.server", "error"),
        ("Task exception was never retrieved", "asyncio", "error"),
    ]
    assert lines[1]["error_type"] == "builtins.ValueError"
    assert "timestamp" in lines[0]
