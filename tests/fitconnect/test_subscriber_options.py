"""``[sources.NAME]`` options of the ``fitconnect`` source: every refusal names the option."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.config import load_config
from gateway.errors import ConfigError, ConfigErrors
from gateway.fitconnect.keys import PrivateJWK
from gateway.metrics import Metrics
from gateway.runtime import build_runtime
from gateway.secrets import secret_resolver
from gateway.sources.base import SourceContext
from gateway.sources.fitconnect import subsystem as options_module  # where key files are loaded
from gateway.sources.fitconnect.options import parse_options
from gateway.sources.fitconnect.source import FitConnectSource
from gateway.store.blobs import BlobStore

from .pki import certificate, name
from .subscriber_helpers import DEMO_SCHEMAS, sandbox_keys

DEST = "7e4c1f2a-8d3b-4e5f-9a6b-0c1d2e3f4a5b"
_LOADED: dict[str, PrivateJWK] = {}


@pytest.fixture(autouse=True)
def _load_each_key_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading an RSA-4096 JWK checks the key (~0.3 s); these tests parse the same files 40 times."""
    real = options_module.load_private_jwk

    def load(path: Any) -> PrivateJWK:
        if str(path) not in _LOADED:
            _LOADED[str(path)] = real(path)  # errors propagate and are not cached
        return _LOADED[str(path)]

    monkeypatch.setattr(options_module, "load_private_jwk", load)


def context(tmp_path: Path, *, production: bool = False, routes: list[web.RouteDef] | None = None) -> SourceContext:
    return SourceContext(
        name="fc",
        base_dir=tmp_path,
        intake=None,  # type: ignore[arg-type]  # not used while parsing options
        resolve_secret=secret_resolver(tmp_path),
        production=production,
        add_routes=(routes if routes is not None else []).extend,
        blobs=BlobStore(tmp_path / "blobs"),
        metrics=Metrics(),
    )


def options(tmp_path: Path, metadata_dir: Path, **changes: Any) -> dict[str, Any]:
    keys = sandbox_keys()
    (tmp_path / "client.secret").write_text("s3cret")
    base: dict[str, Any] = {
        "submission_api_url": "https://zsd.example.org",
        "token_url": "https://auth.example.org/token",
        "client_id": "subscriber",
        "client_secret": {"file": "client.secret"},
        "destination_id": DEST,
        "decryption_keys": [str(keys.encryption_private)],
        "signing_key": str(keys.signing_private),
        "allow_self_signed": True,
        "metadata_schema_dirs": [str(metadata_dir)],
        "data_schema_dirs": [str(DEMO_SCHEMAS)],
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


ADAPTER_TOML = '[adapters.fs]\ntype = "filesystem"\ndirectory = "out"\n[[routes]]\nname = "all"\nadapter = "fs"\n'


def source_toml(name: str, destination: str, metadata_dir: Path) -> str:
    """``[sources.NAME]`` of a fitconnect source with the sandbox keys (client secret: client.secret)."""
    keys = sandbox_keys()
    return f"""[sources.{name}]
type = "fitconnect"
submission_api_url = "https://zsd.example.org"
token_url = "https://auth.example.org/token"
client_id = "x-{name}"
client_secret = {{ file = "client.secret" }}
destination_id = "{destination}"
decryption_keys = ["{keys.encryption_private}"]
signing_key = "{keys.signing_private}"
allow_self_signed = true
metadata_schema_dirs = ["{metadata_dir}"]
"""


def refused(tmp_path: Path, raw: dict[str, Any], *, production: bool = False) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_options(context(tmp_path, production=production), raw)
    return info.value


def test_defaults(tmp_path: Path, fitconnect_shared: Path) -> None:
    opts = parse_options(context(tmp_path), options(tmp_path, fitconnect_shared))
    assert opts.profile.name == "v1"
    assert opts.callback_path == "/callbacks/fitconnect/fc"
    assert opts.accept_policy == "delivered"
    assert sorted(opts.metadata_versions) == ["1.0.0", "2.1.0"]
    assert opts.allow_missing_metadata_schema is True
    assert opts.max_attachment_bytes == 500 << 20
    assert opts.max_inflated_bytes == opts.max_attachment_bytes
    assert opts.client_secret == "s3cret"
    assert "s3cret" not in repr(opts)


@pytest.mark.parametrize(
    ("changes", "key", "text"),
    [
        ({"polling": 5}, "polling", "unknown key (known: accept_policy, allow_missing_metadata_schema, "),
        ({"poll_interval": "5"}, "poll_interval", "expected float"),
        ({"poll_interval": 0}, "poll_interval", "> 0"),
        ({"poll_interval": True}, "poll_interval", "expected float"),
        ({"api_profile": "v3"}, "api_profile", "one of"),
        ({"submission_api_url": None}, "submission_api_url", "required"),
        ({"submission_api_url": "zsd.example.org"}, "submission_api_url", "absolute"),
        ({"submission_api_url": "https://zsd.example.org/v1"}, "submission_api_url", "API version"),
        ({"client_secret": "inline"}, "client_secret", "inline"),
        ({"client_secret": {"file": "missing.secret"}}, "client_secret", "cannot read secret"),
        ({"destination_id": "bauamt"}, "destination_id", "UUID"),
        ({"decryption_keys": []}, "decryption_keys", "must not be empty"),
        ({"decryption_keys": "key.json"}, "decryption_keys", "expected list"),
        ({"decryption_keys": ["missing.jwk.json"]}, "decryption_keys", "cannot read"),
        ({"signing_key": str(sandbox_keys().encryption_private)}, "signing_key", "not a signing key"),
        ({"decryption_keys": [str(sandbox_keys().signing_private)]}, "decryption_keys", "not a decryption key"),
        ({"callback_secret": {"file": "short.secret"}}, "callback_secret", "32"),
        ({"callback_path": "callbacks"}, "callback_path", "absolute URL path"),
        ({"callback_path": "/a/../b"}, "callback_path", "absolute URL path"),
        ({"accept_policy": "received"}, "accept_policy", "delivered"),
        ({"allow_self_signed": False}, "trust_anchors", "no Zustelldienst key could ever be validated"),
        ({"trust_anchors": ["missing.pem"]}, "trust_anchors", "cannot read"),
        ({"metadata_schema_dirs": ["nowhere"]}, "metadata_schema_dirs", "not a directory"),
        ({"metadata_schema_dirs": None}, "metadata_schema_dirs", "no metadata schema"),
        ({"metadata_versions": ["1.5.0"]}, "metadata_versions", "no metadata schema for version 1.5.0"),
        ({"metadata_versions": ["1.0"]}, "metadata_versions", "MAJOR.MINOR.PATCH"),
        (
            {"metadata_versions": ["2.1.0"], "allow_missing_metadata_schema": True},
            "allow_missing_metadata_schema",
            "1.0.0 is not supported",
        ),
        ({"max_attachment_bytes": 0}, "max_attachment_bytes", "> 0"),
        ({"page_size": 501}, "page_size", "between 1 and 500"),
    ],
)
def test_refused(tmp_path: Path, fitconnect_shared: Path, changes: dict[str, Any], key: str, text: str) -> None:
    (tmp_path / "short.secret").write_text("too-short")
    error = refused(tmp_path, options(tmp_path, fitconnect_shared, **changes))
    assert error.key == key
    assert text in error.reason


def test_metadata_versions_subset_without_legacy(tmp_path: Path, fitconnect_shared: Path) -> None:
    opts = parse_options(context(tmp_path), options(tmp_path, fitconnect_shared, metadata_versions=["2.1.0"]))
    assert list(opts.metadata_versions) == ["2.1.0"]
    assert opts.allow_missing_metadata_schema is False  # the default follows: no 1.0.0, no assuming it


def test_broken_data_schema_is_a_startup_error(tmp_path: Path, fitconnect_shared: Path) -> None:
    schemas = tmp_path / "schemas"
    schemas.mkdir()
    (schemas / "a.schema.json").write_text(json.dumps({"$id": "https://x.example/a.json", "type": 5}))
    error = refused(tmp_path, options(tmp_path, fitconnect_shared, data_schema_dirs=[str(schemas)]))
    assert error.key == "data_schema_dirs"
    assert "not a valid JSON schema" in error.reason
    (schemas / "a.schema.json").write_text(json.dumps({"$id": "https://x.example/a.json", "$ref": "other.json"}))
    error = refused(tmp_path, options(tmp_path, fitconnect_shared, data_schema_dirs=[str(schemas)]))
    assert "not in the schema dirs" in error.reason
    (schemas / "a.schema.json").write_text("{")
    error = refused(tmp_path, options(tmp_path, fitconnect_shared, data_schema_dirs=[str(schemas)]))
    assert "not UTF-8 JSON" in error.reason
    (schemas / "a.schema.json").unlink()
    (schemas / "b.xsd").write_text('<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema"/>')
    error = refused(tmp_path, options(tmp_path, fitconnect_shared, data_schema_dirs=[str(schemas)]))
    assert "targetNamespace" in error.reason


# -- production mode ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "key", "text"),
    [
        ({"submission_api_url": "http://zsd.example.org"}, "submission_api_url", "https"),
        ({"token_url": "http://auth.example.org/token"}, "token_url", "https"),
        ({}, "allow_self_signed", "refused in production"),
        ({"allow_self_signed": None}, "trust_anchors", "required in production"),
    ],
)
def test_production_rules(
    tmp_path: Path, fitconnect_shared: Path, changes: dict[str, Any], key: str, text: str
) -> None:
    error = refused(tmp_path, options(tmp_path, fitconnect_shared, **changes), production=True)
    assert error.key == key
    assert text in error.reason


def test_production_refuses_test_keys(tmp_path: Path, fitconnect_shared: Path) -> None:
    # A trust anchor that does not matter: the sandbox keys are marked TEST ONLY and self-signed.
    root_key = sandbox_keys()
    anchor = tmp_path / "anchor.pem"
    anchor.write_bytes(Path(root_key.directory / "encryption.cert.pem").read_bytes())
    raw = options(tmp_path, fitconnect_shared, allow_self_signed=None, trust_anchors=[str(anchor)])
    error = refused(tmp_path, raw, production=True)
    assert error.key == "decryption_keys"
    assert "TEST key material" in error.reason


def test_keys_must_chain_to_the_trust_anchors(tmp_path: Path, fitconnect_shared: Path, ca_keys: Any) -> None:
    """Outside test mode's self-signed allowance, our own keys must chain to a configured anchor."""
    root_key, _intermediate, _spare = ca_keys
    root = certificate(
        subject=name("Root"), subject_key=root_key.public_key(), issuer=name("Root"), issuer_key=root_key, ca=True
    )
    anchor = tmp_path / "root.pem"
    anchor.write_bytes(root.public_bytes(Encoding.PEM))
    raw = options(tmp_path, fitconnect_shared, allow_self_signed=None, trust_anchors=[str(anchor)])
    error = refused(tmp_path, raw)
    assert error.key == "decryption_keys"
    assert "self-signed" in error.reason


def test_callback_route_only_with_a_secret(tmp_path: Path, fitconnect_shared: Path) -> None:
    routes: list[web.RouteDef] = []
    ctx = context(tmp_path, routes=routes)
    FitConnectSource(ctx, parse_options(ctx, options(tmp_path, fitconnect_shared)))
    assert routes == []
    (tmp_path / "cb.secret").write_text("c" * 40)
    raw = options(tmp_path, fitconnect_shared, callback_secret={"file": "cb.secret"}, callback_path="/hooks/fc")
    FitConnectSource(ctx, parse_options(ctx, raw))
    assert [(r.method, r.path) for r in routes] == [("POST", "/hooks/fc")]  # type: ignore[attr-defined]


def test_errors_are_located_in_gateway_toml(tmp_path: Path, fitconnect_shared: Path) -> None:
    (tmp_path / "client.secret").write_text("s3cret")
    (tmp_path / "gateway.toml").write_text(
        ADAPTER_TOML + source_toml("bauamt", DEST, fitconnect_shared) + "poll_interval = -1\n"
    )
    (tmp_path / "out").mkdir()
    with pytest.raises(ConfigErrors) as info:
        build_runtime(load_config(tmp_path / "gateway.toml"))
    (error,) = info.value.errors
    assert error.key == "sources.bauamt.poll_interval"
    assert error.file.endswith("gateway.toml")


async def test_listing_with_non_uuid_ids_is_ignored(tmp_path: Path, fitconnect_shared: Path) -> None:
    ctx = context(tmp_path)
    source = FitConnectSource(ctx, parse_options(ctx, options(tmp_path, fitconnect_shared)))
    case = "9eec7d3e-dc66-4f82-9f52-1520bf96a32e"
    for item in (
        {"submissionId": "../../cases/x", "caseId": case, "destinationId": DEST},
        {"submissionId": case, "caseId": "x/../y", "destinationId": DEST},
        {"submissionId": case, "caseId": case, "destinationId": "1f0e7b4c-0000-4000-8000-000000000000"},  # not ours
        "not an object",
    ):
        assert await source._enqueue(item) is False  # never reaches the store (there is none here)
    await source.close()


def test_shared_key_files_and_schemas_are_loaded_once(tmp_path: Path, fitconnect_shared: Path) -> None:
    """Many destinations naming the same key files and schema dirs: loaded and validated once."""
    from gateway.assembly import plan_file
    from gateway.sources.fitconnect.subsystem import FitConnectSubsystem

    (tmp_path / "client.secret").write_text("s3cret")
    sources = "".join(
        source_toml(f"fc{i}", f"00000000-0000-4000-8000-00000000000{i}", fitconnect_shared)
        + f'data_schema_dirs = ["{DEMO_SCHEMAS}"]\n'
        for i in range(5)
    )
    path = tmp_path / "gateway.toml"
    path.write_text(ADAPTER_TOML + sources)
    plan = plan_file(path)
    assert plan.reader.errors == []
    cache = plan.subsystems["fitconnect"]
    assert isinstance(cache, FitConnectSubsystem)
    assert cache.loads == 3  # two key files and one schema set, for five sources
    assert len(plan.sources) == 5


async def test_sources_of_one_client_share_its_token_cache(tmp_path: Path, fitconnect_shared: Path) -> None:
    from dataclasses import replace

    from gateway.sources.fitconnect.subsystem import FitConnectSubsystem

    ctx = replace(context(tmp_path), subsystems={"fitconnect": FitConnectSubsystem()})
    raw = options(tmp_path, fitconnect_shared)
    first = FitConnectSource(ctx, parse_options(ctx, raw))
    second = FitConnectSource(replace(ctx, name="fc2"), parse_options(ctx, raw))
    other = FitConnectSource(ctx, parse_options(ctx, {**raw, "client_id": "another-client"}))
    assert first.api.tokens is second.api.tokens  # one token for the client, whatever number of destinations
    assert other.api.tokens is not first.api.tokens
    for source in (first, second, other):
        await source.close()
