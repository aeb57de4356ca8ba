"""Async validation off the event loop: a pool of warmed worker processes with a time bound.

Why processes, not threads (measured, see docs/xoev.md): libxml2 schema validation releases the GIL,
but the hardened parse is driven from Python (pull events for the limits) and xmlschema's error
reporting is pure Python, so two threads gave 1.1x (lxml) and 0.94x (xmlschema) on two cores.
Processes also make the time bound real: a worker that overruns ``validate_timeout`` is killed and
replaced, and the caller gets ``XmlRejected("timeout")``.

Each worker opens the registry from the warm on-disk cache (the parent compiles it first), then
materialises every schema before it reports ready. The parent parses a valid document once more
(hardened) to run the plugin hook ``gateway_xoev_identify`` here, where the plugins live.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import multiprocessing
import multiprocessing.connection
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import structlog

from gateway.errors import GatewayError
from gateway.xoev.config import XoevConfig
from gateway.xoev.decode import DecodeError, ValidationOutcome, decode_to_dict, validate_xml
from gateway.xoev.identity import MessageIdentity
from gateway.xoev.parsing import XmlRejected, parse_xml
from gateway.xoev.registry import SchemaRegistry
from gateway.xoev.understanding import identify

log = structlog.get_logger(__name__)

INLINE_PARSE_BYTES = 256 * 1024  # identification parses documents up to this size on the event loop


class ValidationUnavailable(GatewayError):
    """No worker could process the document (a worker died, or the validator is not running)."""


class _Worker:
    def __init__(self, process: multiprocessing.process.BaseProcess, conn: multiprocessing.connection.Connection):
        self.process = process
        self.conn = conn

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def roundtrip(self, message: tuple[str, bytes]) -> tuple[str, Any]:
        self.conn.send(message)
        reply: tuple[str, Any] = self.conn.recv()
        return reply

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.process.kill()
        self.process.join(5)
        with contextlib.suppress(Exception):
            self.conn.close()


def _worker_main(conn: multiprocessing.connection.Connection, config: XoevConfig) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent owns shutdown
    started = time.perf_counter()
    try:
        registry = SchemaRegistry.open(config)
        registry.warm()
    except Exception as exc:
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", time.perf_counter() - started))
    while True:
        try:
            op, payload = conn.recv()
        except (EOFError, OSError):
            return
        try:
            if op == "validate":
                result: Any = validate_xml(
                    payload, registry=registry, limits=config.limits, max_issues=config.max_issues
                )
            elif op == "decode":
                result = decode_to_dict(registry, payload, limits=config.limits)
            elif op == "validate+decode":  # one round trip for the HTTP intake (it needs both)
                outcome = validate_xml(payload, registry=registry, limits=config.limits, max_issues=config.max_issues)
                decoded: dict[str, Any] | str | None = None
                if outcome.valid:
                    try:
                        decoded = decode_to_dict(registry, payload, limits=config.limits)
                    except (DecodeError, XmlRejected) as exc:
                        decoded = f"{type(exc).__name__}: {exc}"
                result = (outcome, decoded)
            else:
                return
            conn.send(("ok", result))
        except XmlRejected as exc:
            conn.send(("rejected", exc))
        except DecodeError as exc:
            conn.send(("decode-error", str(exc)))
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class XoevValidator:
    """``async with XoevValidator(config, hook=pm.hook) as v: outcome = await v.validate_xml(data)``."""

    def __init__(
        self,
        config: XoevConfig,
        *,
        hook: Any = None,
        workers: int | None = None,
        timeout: float | None = None,
        start_method: str = "spawn",
    ) -> None:
        self.config = config
        self.hook = hook
        self.size = workers or config.workers
        self.timeout = timeout or config.validate_timeout
        self._ctx: Any = multiprocessing.get_context(start_method)
        self._idle: asyncio.Queue[_Worker] = asyncio.Queue()
        self._workers: set[_Worker] = set()
        self._io: ThreadPoolExecutor | None = None
        self._closing = False
        self._replacing: set[asyncio.Task[None]] = set()
        self.registry: SchemaRegistry | None = None
        self.ready_seconds: list[float] = []

    async def __aenter__(self) -> XoevValidator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def worker_pids(self) -> list[int]:
        return [w.pid for w in self._workers if w.pid is not None]

    async def start(self) -> None:
        """Compile/verify the schema cache once here, then start and warm every worker."""
        loop = asyncio.get_running_loop()
        self._io = ThreadPoolExecutor(max_workers=2 * self.size + 2, thread_name_prefix="xoev-io")
        self.registry = await loop.run_in_executor(self._io, SchemaRegistry.open, self.config)
        workers = await asyncio.gather(*(self._spawn() for _ in range(self.size)))
        for worker in workers:
            self._idle.put_nowait(worker)

    async def _spawn(self) -> _Worker:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=_worker_main, args=(child_conn, self.config), name="xoev-validator", daemon=True
        )
        process.start()
        child_conn.close()
        worker = _Worker(process, parent_conn)
        self._workers.add(worker)
        loop = asyncio.get_running_loop()
        try:
            status, detail = await loop.run_in_executor(self._io, parent_conn.recv)
        except (EOFError, OSError) as exc:
            self._discard(worker)
            raise ValidationUnavailable("a validation worker died while starting") from exc
        if status != "ready":
            self._discard(worker)
            raise ValidationUnavailable(f"a validation worker failed to start: {detail}")
        self.ready_seconds.append(float(detail))
        log.info("xoev_worker_ready", pid=process.pid, seconds=round(float(detail), 3))
        return worker

    def _start_replacement(self) -> None:
        if self._closing:
            return
        task = asyncio.get_running_loop().create_task(self._replace())
        self._replacing.add(task)
        task.add_done_callback(self._replacing.discard)

    async def _replace(self) -> None:
        try:
            self._idle.put_nowait(await self._spawn())
        except ValidationUnavailable as exc:
            log.error("xoev_worker_replacement_failed", error=str(exc))

    def _discard(self, worker: _Worker) -> None:
        self._workers.discard(worker)
        worker.kill()

    async def close(self) -> None:
        self._closing = True
        for task in list(self._replacing):
            task.cancel()
        for worker in list(self._workers):
            with contextlib.suppress(Exception):
                worker.conn.send(("stop", b""))
        loop = asyncio.get_running_loop()
        for worker in list(self._workers):
            await loop.run_in_executor(self._io, worker.process.join, 2)
            self._discard(worker)
        if self._io is not None:
            self._io.shutdown(wait=False, cancel_futures=True)

    async def _run(self, op: str, data: bytes) -> Any:
        if self._io is None or self._closing:
            raise ValidationUnavailable("the XÖV validator is not running")
        if not self._workers and not self._replacing:
            raise ValidationUnavailable("no validation worker is running")
        worker = await self._idle.get()
        loop = asyncio.get_running_loop()
        replace_worker = False
        try:
            status, result = await asyncio.wait_for(
                loop.run_in_executor(self._io, worker.roundtrip, (op, bytes(data))), self.timeout
            )
        except TimeoutError:
            replace_worker = True
            log.warning("xoev_worker_timeout", pid=worker.pid, seconds=self.timeout)
            raise XmlRejected("timeout", f"validation took longer than {self.timeout:g} s") from None
        except (EOFError, OSError) as exc:
            replace_worker = True
            log.error("xoev_worker_died", pid=worker.pid)
            raise ValidationUnavailable("the validation worker died while processing the document") from exc
        finally:
            if replace_worker:
                self._discard(worker)
                self._start_replacement()
            else:
                self._idle.put_nowait(worker)
        if status == "ok":
            return result
        if status == "rejected":
            raise result
        if status == "decode-error":
            raise DecodeError(result)
        raise ValidationUnavailable(f"validation failed unexpectedly: {result}")

    async def validate_xml(self, xml_bytes: bytes) -> ValidationOutcome:
        """Validate in a worker; when valid, identify the message via the plugin hook."""
        outcome: ValidationOutcome = await self._run("validate", xml_bytes)
        return await self._identified(outcome, xml_bytes)

    async def validate_and_decode(self, xml_bytes: bytes) -> tuple[ValidationOutcome, dict[str, Any] | str | None]:
        """:meth:`validate_xml` and, for a valid document, :meth:`decode_to_dict` in one worker round
        trip. The second value is the decoded data, ``None`` for an invalid document, or the error
        (``"DecodeError: ..."``) when a valid document could not be decoded."""
        outcome, decoded = await self._run("validate+decode", xml_bytes)
        return await self._identified(outcome, xml_bytes), decoded

    async def _identified(self, outcome: ValidationOutcome, xml_bytes: bytes) -> ValidationOutcome:
        if self.hook is None or not outcome.valid:
            return outcome
        if len(xml_bytes) <= INLINE_PARSE_BYTES:  # a thread hop costs more than parsing a small document
            tree = parse_xml(xml_bytes, self.config.limits)
        else:
            tree = await asyncio.get_running_loop().run_in_executor(self._io, parse_xml, xml_bytes, self.config.limits)
        identity = await self._identify(tree.getroot())
        return replace(outcome, identity=identity)

    async def _identify(self, root: Any) -> MessageIdentity | None:
        result: Any = identify(self.hook, root)
        if inspect.isawaitable(result):  # the hook convention allows async implementations
            result = await result
        return result if isinstance(result, MessageIdentity) else None

    async def decode_to_dict(self, xml_bytes: bytes) -> dict[str, Any]:
        result: dict[str, Any] = await self._run("decode", xml_bytes)
        return result
