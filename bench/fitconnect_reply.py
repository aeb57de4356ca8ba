"""FIT-Connect reply channel, one large attachment: how long ``send`` takes against a baseline.

    python bench/fitconnect_reply.py [--size-mb 100] [--shared ../shared] [--runs 3]

One process runs a sandbox Zustelldienst, a gateway runtime (fitconnect source, SQLite, blob store),
the ``fitconnect`` reply channel on that source and the sandbox's test online service. The online
service submits an application asking for a FIT-Connect reply; the gateway takes it in. Then, per run:

* **baseline**: the test sender submits ``--size-mb`` MB of random bytes as one attachment to the
  same sandbox: the same JWE encryption (RSA-OAEP-256/A256GCM, streamed into a temp file) and the
  same upload, by the code FIT-Connect senders would use anyway;
* **reply**: the channel sends an answer carrying the same bytes (a blob in the gateway's store):
  deterministic ids, create, stream-encrypt, upload, submit, read back and check submit-reply.

The gateway stops receiving before the measurement (its source would otherwise download and
decrypt every baseline submission meanwhile); the channel keeps the source's client. Printed:
seconds and MB/s of both and the reply's time as a percentage of the baseline (lower is better;
> 100 % is the channel's own overhead), best of ``--runs``. Same run, same machine, so the
ratio is what to compare; the absolute numbers move with the load (printed too).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "plugins"))

from fitconnect_large_attachment import gateway_toml, write_random  # noqa: E402  (the same gateway and bytes)

from gateway.channels.base import ChannelContext, Outgoing, SendOutcome  # noqa: E402
from gateway.config import load_config  # noqa: E402
from gateway.model import Answer, AnswerKind, MessageState, ReplyContext  # noqa: E402
from gateway.plugins import PluginHost  # noqa: E402
from gateway.runtime import build_runtime  # noqa: E402
from gateway_sandbox.online_service.replies import ApplicantKey  # noqa: E402
from gateway_sandbox.online_service.sender import OutgoingAttachment, Sender  # noqa: E402
from gateway_sandbox.testing import (  # noqa: E402
    GEWERBE_SCHEMA,
    GEWERBE_SERVICE,
    REPLY_PROCESS_STANDARDS,
    generate_sandbox_keys,
    running_sandbox,
)
from gateway_sandbox.zustelldienst.config import Limits  # noqa: E402

MB = 1000 * 1000
DATA = (REPO / "schemas" / "demo" / "examples" / "gewerbeanmeldung.json").read_bytes()


async def taken_in(runtime: Any, submission_id: str) -> Any:
    """The stored message once the gateway accepted it upstream (polled: the bench's only wait)."""
    for _ in range(6000):
        found = await runtime.store.find_by_source("fc", submission_id)
        if found is not None and found.envelope.state is MessageState.ACKNOWLEDGED:
            return found
        await asyncio.sleep(0.01)
    raise SystemExit("the gateway did not take the application in within a minute")


async def run(size: int, shared: Path, runs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fc-reply-bench-") as raw:
        tmp = Path(raw)
        keys = generate_sandbox_keys(tmp / "keys")
        applicant_key = ApplicantKey.generate()
        async with running_sandbox(keys=keys, limits=Limits(max_attachment_bytes=size * 2)) as sandbox:
            runtime = build_runtime(load_config(gateway_toml(tmp, sandbox, shared, size)))
            contexts: dict[str, ReplyContext | None] = {}
            receive = runtime.intake.receive

            async def capture(incoming: Any) -> Any:  # until the store keeps the ReplyContext
                contexts[incoming.source.reference] = incoming.reply
                return await receive(incoming)

            runtime.intake.receive = capture  # type: ignore[method-assign]
            await runtime.start()
            running = True
            big = tmp / "attachment.bin"
            write_random(big, size)
            try:
                async with sandbox.online_service(applicant_key) as applicant:
                    sent = await applicant.submit(destination_id=sandbox.destination_id,
                                                  service_identifier=GEWERBE_SERVICE, data=DATA,
                                                  data_schema_uri=GEWERBE_SCHEMA)  # fmt: skip
                    found = await taken_in(runtime, sent.submission_id)
                    message = found.envelope.with_(reply=contexts[sent.submission_id])
                    with runtime.blobs.writer() as writer:
                        writer.write(big.read_bytes())
                        blob = writer.commit(name="attachment", media_type="application/pdf", filename="b.pdf")
                    # Stop receiving: the baseline's submissions must not be picked up (a 100 MB download
                    # and decryption) while a reply is measured. The channel's client reopens its session.
                    await runtime.stop()
                    running = False
                    ctx = ChannelContext(name="r", base_dir=tmp, resolve_secret=lambda r, k: None, production=False,
                                         sources=runtime.sources)  # fmt: skip
                    channel = (
                        PluginHost.load()
                        .reply_channel_types["fitconnect"]
                        .create(ctx, {"source": "fc", "process_standards": list(REPLY_PROCESS_STANDARDS)})
                    )
                    baseline, reply = [], []
                    creds = sandbox.sender
                    for _ in range(runs):
                        started = time.perf_counter()
                        async with Sender(sandbox.base_url, sandbox.token_url, creds.client_id,
                                          creds.client_secret) as sender:  # fmt: skip
                            await sender.send(
                                destination_id=sandbox.destination_id, service_identifier=GEWERBE_SERVICE,
                                service_name="Bench", data=None, data_schema_uri=None, data_mime_type=None,
                                attachments=[OutgoingAttachment(mime_type="application/pdf", path=big)],
                            )  # fmt: skip
                        baseline.append(time.perf_counter() - started)
                        answer_id = str(uuid.uuid4())
                        answer = Answer(id=answer_id, message_id=message.id, kind=AnswerKind.REPLY, caller="bench",
                                        idempotency_key=answer_id, created_at=datetime.now(UTC),
                                        attachments=(blob,))  # fmt: skip
                        outgoing = Outgoing(answer=answer, message=message, blobs=runtime.blobs, attempt=1,
                                            idempotency_key=answer_id)  # fmt: skip
                        started = time.perf_counter()
                        result = await channel.send(outgoing)
                        reply.append(time.perf_counter() - started)
                        if result.outcome is not SendOutcome.SENT:
                            raise SystemExit(f"reply not sent: {result.reason}")
                    await channel.close()
                    await channel.api.close()  # the session it reopened after the runtime stopped
            finally:
                if running:
                    await runtime.stop()
        return {
            "size_mb": size / MB,
            "runs": runs,
            "baseline_seconds": min(baseline),
            "reply_seconds": min(reply),
            "baseline_mb_s": size / MB / min(baseline),
            "reply_mb_s": size / MB / min(reply),
            "reply_vs_baseline_percent": 100 * min(reply) / min(baseline),
            "loadavg": os.getloadavg(),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    args = parser.parse_args()
    result = asyncio.run(run(args.size_mb * MB, args.shared, args.runs))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
