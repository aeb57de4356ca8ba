"""``gateway sandbox send``: submit one application with the test sender (optionally broken)."""

from __future__ import annotations

import argparse
import asyncio
import json
import mimetypes
import sys
from pathlib import Path
from typing import Any

from gateway.fitconnect.keys import KeyValidationError
from gateway_sandbox.online_service.sender import Breakage, OutgoingAttachment, Sender, SenderError, SenderQuirks

# Attachments above this size are streamed from disk instead of read into memory.
_STREAM_ATTACHMENTS_ABOVE = 8 << 20


def add_send_parser(sandbox_subparsers: Any) -> None:
    """Add ``send`` to the ``sandbox`` command's sub-parsers."""
    p = sandbox_subparsers.add_parser("send", help="submit one application as a test online service")
    p.add_argument("--url", required=True, help="Submission API base URL (scheme://host:port, paths start /v1)")
    p.add_argument("--token-url", required=True, help="OAuth token endpoint")
    p.add_argument("--client-id", required=True)
    p.add_argument("--client-secret-file", required=True, type=Path, help="file holding the client secret")
    p.add_argument("--destination", required=True, help="destination id")
    p.add_argument("--service", required=True, help="service identifier URN (e.g. urn:de:fim:leika:leistung:…)")
    p.add_argument("--service-name", default="Testleistung")
    p.add_argument("--data", type=Path, default=None, help="file with the data part (Fachdaten)")
    p.add_argument("--data-schema", default=None, help="data schema URI")
    p.add_argument("--data-mime", default="application/json", choices=["application/json", "application/xml"])
    p.add_argument("--attach", type=Path, action="append", default=[], help="attachment file (repeatable)")
    p.add_argument("--metadata-version", default="1.0.0")
    p.add_argument("--zip-def", action="store_true", help="legacy quirk: JWE zip DEF")
    p.add_argument("--kid-thumbprint", action="store_true", help="legacy quirk: JWE kid = key thumbprint")
    p.add_argument("--omit-schema", action="store_true", help="legacy quirk: metadata without $schema")
    p.add_argument(
        "--break",
        dest="breakage",
        default=None,
        choices=[b.value for b in Breakage],
        help="send a deliberately broken submission (negative tests)",
    )
    p.set_defaults(func=run_send)


def _attachment(path: Path) -> OutgoingAttachment:
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if path.stat().st_size > _STREAM_ATTACHMENTS_ABOVE:
        return OutgoingAttachment(mime_type=mime, filename=path.name, path=path)
    return OutgoingAttachment(mime_type=mime, filename=path.name, content=path.read_bytes())


async def _send(args: argparse.Namespace) -> dict[str, Any]:
    secret = args.client_secret_file.read_text(encoding="utf-8").strip()
    data = args.data.read_bytes() if args.data is not None else None
    if data is not None and not args.data_schema:
        raise ValueError("--data needs --data-schema")
    async with Sender(args.url, args.token_url, args.client_id, secret) as sender:
        sent = await sender.send(
            destination_id=args.destination,
            service_identifier=args.service,
            service_name=args.service_name,
            data=data,
            data_schema_uri=args.data_schema,
            data_mime_type=args.data_mime if data is not None else None,
            attachments=[_attachment(path) for path in args.attach],
            metadata_version=args.metadata_version,
            quirks=SenderQuirks(
                zip_def=args.zip_def, kid_thumbprint=args.kid_thumbprint, omit_metadata_schema=args.omit_schema
            ),
            breakage=Breakage(args.breakage) if args.breakage else None,
        )
    return {
        "submissionId": sent.submission_id,
        "caseId": sent.case_id,
        "destinationId": sent.destination_id,
        "attachmentIds": sent.attachment_ids,
        "authenticationTags": sent.auth_tags,
    }


def run_send(args: argparse.Namespace) -> int:
    try:
        result = asyncio.run(_send(args))
    except (SenderError, KeyValidationError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0
