"""``gateway keys generate``: create a TEST ONLY FIT-Connect key set for a destination."""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path
from typing import Any

from gateway.fitconnect.keys import MIN_RSA_BITS, generate_key_set

_FILES = (
    "encryption.private.jwk.json",
    "encryption.public.jwk.json",
    "signing.private.jwk.json",
    "signing.public.jwk.json",
    "encryption.cert.pem",
    "signing.cert.pem",
)


def register(subparsers: Any) -> None:
    """Add the ``keys`` command (with its ``generate`` sub-command) to the gateway CLI."""
    keys = subparsers.add_parser("keys", help="FIT-Connect key material")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    gen = keys_sub.add_parser(
        "generate",
        help="generate a TEST ONLY encryption + signing key set (self-signed; never for production)",
    )
    gen.add_argument("--destination", required=True, help="destination id (UUID) the keys are for")
    gen.add_argument("--out", required=True, type=Path, help="output directory")
    gen.add_argument("--common-name", default=None, help="certificate CN prefix")
    gen.add_argument("--bits", type=int, default=MIN_RSA_BITS, help=f"RSA modulus size (>= {MIN_RSA_BITS})")
    gen.add_argument("--force", action="store_true", help="overwrite existing key files")
    gen.set_defaults(func=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    try:
        destination = str(uuid.UUID(args.destination))
    except ValueError:
        print(f"error: --destination {args.destination!r} is not a UUID", file=sys.stderr)
        return 2
    if args.bits < MIN_RSA_BITS:
        print(f"error: FIT-Connect requires RSA keys of at least {MIN_RSA_BITS} bits", file=sys.stderr)
        return 2
    out: Path = args.out
    existing = [name for name in _FILES if (out / name).exists()]
    if existing and not args.force:
        print(f"error: {out} already holds {', '.join(existing)} (use --force to overwrite)", file=sys.stderr)
        return 1
    paths = generate_key_set(destination, out, common_name=args.common_name, bits=args.bits)
    print(
        json.dumps(
            {
                "destinationId": destination,
                "encryptionKid": paths.encryption_kid,
                "signingKid": paths.signing_kid,
                "files": {name: str(out / name) for name in _FILES},
                "note": "TEST ONLY key material (self-signed); never use it in production",
            },
            indent=2,
        )
    )
    return 0
