"""gateway.toml loading: every problem is reported with file, key path and reason, all at once,
and secret values never appear in an error message or a repr."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from core.support import write_config
from gateway.cli import main
from gateway.config import load_config
from gateway.errors import ConfigError, ConfigErrors
from gateway.runtime import build_runtime
from gateway.secrets import SecretRef, parse_secret_ref, secret_resolver

REPO_ROOT = Path(__file__).resolve().parents[2]

MINIMAL = """
[adapters.fv]
type = "filesystem"
directory = "out"

[[routes]]
name = "all"
adapter = "fv"
"""


def errors_of(tmp_path: Path, text: str) -> list[ConfigError]:
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigErrors) as info:
        load_config(path)
    for err in info.value.errors:
        assert err.file == str(path)  # every error names its file
    return info.value.errors


def keyed(errors: list[ConfigError]) -> dict[str, str]:
    return {e.key: e.reason for e in errors}


def unknown(*known: str) -> str:
    return f"unknown key (known: {', '.join(known)})"


def test_minimal_config_loads_with_defaults(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, MINIMAL))
    assert config.gateway.mode == "test"
    assert not config.production
    assert config.store.backend == "sqlite"
    assert config.path(config.store.path) == tmp_path / "var" / "gateway.db"
    assert config.http.port == 8480
    assert config.http.admin_token is None
    assert config.delivery.lease_seconds == 120.0
    assert set(config.retry) == {"default"}
    assert config.retry["default"].max_attempts == 12
    assert config.adapters["fv"].options == {"directory": "out"}
    assert config.adapters["fv"].concurrency == 4
    assert [r.name for r in config.routes] == ["all"]
    assert config.routes[0].retry == "default"


def test_unknown_key_top_level_and_nested(tmp_path: Path) -> None:
    errors = errors_of(
        tmp_path,
        'colour = "blue"\n'
        + MINIMAL
        + """
[http]
prot = 8080
[retry.slow]
max_attempt = 3
[routing]
fallbak = "all"
""",
    )
    http_keys = (
        "admin_token",
        "body_timeout",
        "client_ca",
        "drain_seconds",
        "header_timeout",
        "host",
        "max_body_bytes",
        "port",
        "tls_cert",
        "tls_key",
    )
    assert keyed(errors) == {
        "colour": "unknown key (known: adapters, delivery, gateway, http, logging, plugins, retry, routes, routing, "
        "sources, store and subsystem tables)",
        "http.prot": unknown(*http_keys),
        "retry.slow.max_attempt": unknown("initial_delay", "max_age", "max_attempts", "max_delay"),
        "routing.fallbak": unknown("fallback", "test_route"),
    }
    rendered = str(ConfigErrors(errors))
    assert f"{tmp_path / 'gateway.toml'}: http.prot: unknown key (known: admin_token, " in rendered


def test_unknown_key_in_route_and_match(tmp_path: Path) -> None:
    text = MINIMAL + '\n[[routes]]\nname = "x"\nadapter = "fv"\npriority = 1\n[routes.match]\nservce = "urn:x"\n'
    assert keyed(errors_of(tmp_path, text)) == {
        "routes[1].priority": unknown("adapter", "match", "name", "retry", "signature"),
        "routes[1].match.servce": unknown(
            "destination", "message_type", "namespace", "region", "sender", "service", "source", "test"
        ),
    }


def test_wrong_types(tmp_path: Path) -> None:
    text = (
        MINIMAL.replace('name = "all"', 'name = "all"\nretry = 3')
        + """
[http]
port = "8480"
host = 127
[delivery]
lease_seconds = "2m"
[plugins]
allow = "filesystem"
"""
    )
    reasons = keyed(errors_of(tmp_path, text))
    assert reasons["http.port"] == "expected int, got str"
    assert reasons["http.host"] == "expected str, got int"
    assert reasons["delivery.lease_seconds"] == "expected float, got str"
    assert reasons["plugins.allow"] == "expected list, got str"
    assert reasons["routes[0].retry"] == "expected str, got int"


def test_plugin_lists_hold_strings(tmp_path: Path) -> None:
    reasons = keyed(errors_of(tmp_path, MINIMAL + '[plugins]\nallow = ["filesystem", 1]\nblock = [true]\n'))
    assert reasons == {"plugins.allow[1]": "expected str, got int", "plugins.block[0]": "expected str, got bool"}


def test_table_expected(tmp_path: Path) -> None:
    assert keyed(errors_of(tmp_path, "http = 5\n" + MINIMAL)) == {"http": "expected a table, got int"}


def test_bool_is_not_an_int_and_int_is_not_a_bool(tmp_path: Path) -> None:
    text = (
        MINIMAL
        + """
[http]
port = true
[delivery]
batch_size = false
lease_seconds = true
[retry.default]
max_attempts = true
[[routes]]
name = "t"
adapter = "fv"
[routes.match]
test = 1
"""
    )
    reasons = keyed(errors_of(tmp_path, text))
    assert reasons == {
        "http.port": "expected int, got bool",
        "delivery.batch_size": "expected int, got bool",
        "delivery.lease_seconds": "expected float, got bool",
        "retry.default.max_attempts": "expected int, got bool",
        "routes[1].match.test": "expected bool, got int",
    }


def test_integer_accepted_for_float(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, MINIMAL + "[delivery]\nlease_seconds = 30\n"))
    assert config.delivery.lease_seconds == 30.0
    assert isinstance(config.delivery.lease_seconds, float)


def test_value_checks(tmp_path: Path) -> None:
    text = (
        MINIMAL
        + """
[gateway]
mode = "prod"
[http]
port = 70000
[logging]
level = "verbose"
[delivery]
poll_interval = 0
[adapters.other]
type = "filesystem"
directory = "x"
concurrency = 0
"""
    )
    reasons = keyed(errors_of(tmp_path, text))
    assert reasons == {
        "gateway.mode": "must be 'test' or 'production'",
        "http.port": "must be a TCP port",
        "logging.level": "must be debug, info, warning or error",
        "delivery.poll_interval": "must be > 0",
        "adapters.other.concurrency": "must be > 0",
    }


def test_missing_required_keys(tmp_path: Path) -> None:
    text = """
[adapters.fv]
directory = "out"

[[routes]]
adapter = "fv"

[[routes]]
name = "second"
"""
    assert keyed(errors_of(tmp_path, text)) == {
        "adapters.fv.type": "is required",
        "routes[0].name": "is required",
        "routes[1].adapter": "is required",
    }


def test_dangling_references(tmp_path: Path) -> None:
    text = (
        MINIMAL
        + """
[[routes]]
name = "bau"
adapter = "bauamt"
retry = "patient"
[routes.match]
source = "fitconnect-bau"

[[routes]]
name = "glob-source"
adapter = "fv"
[routes.match]
source = "fitconnect-*"

[routing]
fallback = "poststelle"
test_route = "sandbox"
"""
    )
    reasons = keyed(errors_of(tmp_path, text))
    assert reasons == {
        "routes[1].adapter": "names adapter 'bauamt', which is not declared in [adapters]",
        "routes[1].retry": "names retry policy 'patient', which is not declared in [retry]",
        "routes[1].match.source": "matches source 'fitconnect-bau', which is not declared in [sources]",
        "routing.fallback": "names route 'poststelle', which is not declared in [[routes]]",
        "routing.test_route": "names route 'sandbox', which is not declared in [[routes]]",
    }


def test_duplicate_route_name(tmp_path: Path) -> None:
    text = MINIMAL + '[[routes]]\nname = "all"\nadapter = "fv"\n'
    assert keyed(errors_of(tmp_path, text)) == {"routes[1].name": "duplicate route name 'all'"}


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    errors = errors_of(tmp_path, "[http\nport = 1\n")
    assert len(errors) == 1
    assert errors[0].reason.startswith("invalid TOML")
    with pytest.raises(ConfigErrors) as info:
        load_config(tmp_path / "absent.toml")
    assert info.value.errors[0].render() == f"{tmp_path / 'absent.toml'}: file not found"


def test_postgres_needs_a_dsn_secret(tmp_path: Path) -> None:
    reasons = keyed(errors_of(tmp_path, MINIMAL + '[store]\nbackend = "postgresql"\n'))
    assert reasons["store.dsn"].startswith("is required for backend 'postgresql'")


# secrets -------------------------------------------------------------------------------------

SECRET = "s3cr3t-Tr0ub4dor-marker"


def test_inline_secret_is_refused_without_echoing_it(tmp_path: Path) -> None:
    text = MINIMAL + f'[http]\nadmin_token = "{SECRET}"\n[store]\ndsn = "postgresql://gw:{SECRET}@db/gw"\n'
    errors = errors_of(tmp_path, text)
    reasons = keyed(errors)
    assert reasons["http.admin_token"].startswith("secrets must not be written inline")
    assert reasons["store.dsn"].startswith("secrets must not be written inline")
    assert SECRET not in str(ConfigErrors(errors))
    assert all(SECRET not in repr(e) for e in errors)


@pytest.mark.parametrize(
    ("value", "key", "reason"),
    [
        ("{ file = 'a', env = 'B' }", "http.admin_token", "expected a table with exactly one of 'file' or 'env'"),
        ("{ path = 'a' }", "http.admin_token", "expected a table with exactly one of 'file' or 'env'"),
        ("{ file = '' }", "http.admin_token.file", "'file' must be a non-empty string"),
        ("{ env = 5 }", "http.admin_token.env", "'env' must be a non-empty string"),
    ],
)
def test_malformed_secret_references(tmp_path: Path, value: str, key: str, reason: str) -> None:
    assert keyed(errors_of(tmp_path, MINIMAL + f"[http]\nadmin_token = {value}\n")) == {key: reason}


def test_secret_file_resolution_relative_to_config(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "token.txt").write_text(f"  {SECRET}\n", encoding="utf-8")
    config = load_config(write_config(tmp_path, MINIMAL + '[http]\nadmin_token = { file = "secrets/token.txt" }\n'))
    ref = config.http.admin_token
    assert ref is not None
    assert ref.file == tmp_path / "secrets" / "token.txt"
    assert ref.resolve() == SECRET  # stripped
    for shown in (repr(ref), str(ref), repr(config.http), repr(config)):
        assert SECRET not in shown


def test_secret_env_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_TEST_TOKEN", SECRET)
    config = load_config(write_config(tmp_path, MINIMAL + '[http]\nadmin_token = { env = "GW_TEST_TOKEN" }\n'))
    ref = config.http.admin_token
    assert ref == SecretRef(env="GW_TEST_TOKEN")
    assert ref.resolve() == SECRET
    assert SECRET not in repr(ref)
    assert SECRET not in repr(config)


def test_secret_resolution_errors_never_contain_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GW_TEST_UNSET", raising=False)
    with pytest.raises(ConfigError, match="environment variable GW_TEST_UNSET is not set"):
        SecretRef(env="GW_TEST_UNSET").resolve()
    with pytest.raises(ConfigError, match="cannot read secret file"):
        SecretRef(file=tmp_path / "missing.txt").resolve()
    (tmp_path / "empty.txt").write_text("  \n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"secret from file .*empty.txt is empty"):
        SecretRef(file=tmp_path / "empty.txt").resolve()
    # A plugin option written inline is refused by the resolver the plugins get, without the value.
    resolve = secret_resolver(tmp_path)
    with pytest.raises(ConfigError) as info:
        resolve({"token": SECRET}, "token")
    assert info.value.key == "token"
    assert SECRET not in str(info.value)
    assert resolve({}, "token") is None
    with pytest.raises(ConfigError) as info:  # a failed resolution names the option too
        resolve({"token": {"env": "GW_TEST_UNSET"}}, "token")
    assert (info.value.key, info.value.reason) == ("token", "environment variable GW_TEST_UNSET is not set")
    monkeypatch.setenv("GW_TEST_TOKEN", SECRET)
    assert resolve({"token": {"env": "GW_TEST_TOKEN"}}, "token") == SECRET


def test_secret_ref_absolute_file_kept(tmp_path: Path) -> None:
    ref = parse_secret_ref({"file": str(tmp_path / "abs.txt")}, key="k", base_dir=Path("/elsewhere"))
    assert ref.file == tmp_path / "abs.txt"


# plugin-validated options --------------------------------------------------------------------


def test_adapter_options_rejected_by_the_adapter_type(tmp_path: Path) -> None:
    text = MINIMAL.replace('directory = "out"', 'direktory = "out"') + '[adapters.x]\ntype = "carrier-pigeon"\n'
    config = load_config(write_config(tmp_path, text))  # the core parser does not know adapter options
    with pytest.raises(ConfigErrors) as info:
        build_runtime(config)
    reasons = keyed(info.value.errors)
    assert reasons["adapters.fv.direktory"] == unknown("dir_mode", "directory", "file_mode", "fsync", "layout")
    assert reasons["adapters.x.type"].startswith("unknown adapter type 'carrier-pigeon' (installed: ")
    assert "filesystem" in reasons["adapters.x.type"]
    assert all(e.file == str(tmp_path / "gateway.toml") for e in info.value.errors)


def test_check_config_exit_code_and_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, MINIMAL + '[http]\nprot = 1\n[adapters.y]\ntype = "filesystem"\n')
    assert main(["check-config", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    # core and adapter errors in one run
    assert err.splitlines() == [
        f"error: {path}: http.prot: unknown key (known: admin_token, body_timeout, client_ca, drain_seconds, "
        "header_timeout, host, max_body_bytes, port, tls_cert, tls_key)",
        f"error: {path}: adapters.y.directory: is required (the folder the Fachverfahren reads from)",
    ]
    path.write_text(MINIMAL, encoding="utf-8")
    assert main(["check-config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == f"{path}: ok (0 sources, 1 adapters, 1 routes)"
    assert err == ""
    assert not (tmp_path / "out").exists()  # checking creates nothing


def test_check_config_lists_every_error_of_the_file_in_one_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Core keys, a source, two adapters, a subsystem table, secrets and globs: all at once."""
    monkeypatch.delenv("GW_UNSET_SECRET", raising=False)
    text = """
[http]
port = true
admin_token = { file = "missing-admin.txt" }
[store]
dsn = { env = "GW_UNSET_SECRET" }
[adapters.a]
type = "filesystem"
[adapters.b]
type = "webhook"
url = "ftp://x"
timeout = 0
[sources.in]
type = "xoev-http"
[xoev]
workers = 0
[fitconnect]
colour = 1
[[routes]]
name = "all"
adapter = "a"
[[routes]]
name = "bau"
adapter = "b"
[routes.match]
service = "urn:[bau"
region = "09*"
[[routes]]
name = "gewerbe"
adapter = "b"
[routes.match]
service = "urn:gewerbe:*"
"""
    path = write_config(tmp_path, text)
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    problems = {line.split(": ", 3)[2]: line.split(": ", 3)[3] for line in err.splitlines()}
    assert problems == {
        "http.port": "expected int, got bool",
        "http.admin_token": f"cannot read secret file {tmp_path / 'missing-admin.txt'}: No such file or directory",
        "store.dsn": "environment variable GW_UNSET_SECRET is not set",
        "routes[1].match.service": "invalid glob 'urn:[bau': the '[' at position 4 is never closed "
        "(the rule would never match)",
        "routes[1].match.region": "region is a prefix of the ARS/AGS, not a glob: '09*' would never match",
        "routes[2]": "route 'gewerbe' is never used: routes[0] ('all') before it matches every message",
        "xoev.workers": "must be > 0",
        "fitconnect": "subsystem 'fitconnect' takes no options",
        "adapters.a.directory": "is required (the folder the Fachverfahren reads from)",
        "adapters.b.url": "must be an absolute http:// or https:// URL",
        "adapters.b.timeout": "must be a number of seconds, greater than 0 and at most 3600",
        "sources.in.senders": 'is required (a table of sender id = { token = { file = "..." } ... })',
    }
    assert f"warning: {path}: routes[2]: route 'gewerbe' is never used" in err


@pytest.mark.shared
def test_repository_gateway_toml_parses(shared_dir: Path) -> None:
    # [xoev] bundles live in ../shared/xoev: parsing the example checks that they exist.
    config = load_config(REPO_ROOT / "gateway.toml")  # the core parser, in place (no side effects)
    assert config.http.admin_token is not None
    assert config.routing.fallback == "poststelle"
    assert {r.adapter for r in config.routes} <= set(config.adapters)


@pytest.mark.shared
def test_repository_gateway_toml_passes_check_config(
    tmp_path: Path, shared_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # check-config reads every adapter's and source's options (creating nothing), on a copy laid out
    # like the checkout: repo/{gateway.toml,certs,schemas} and ../shared.
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(REPO_ROOT / "gateway.toml", repo / "gateway.toml")
    for folder in ("certs", "schemas"):
        shutil.copytree(REPO_ROOT / folder, repo / folder)
    (tmp_path / "shared").symlink_to(shared_dir, target_is_directory=True)
    assert main(["check-config", str(repo / "gateway.toml")]) == 0, capsys.readouterr().err
    assert "ok (" in capsys.readouterr().out
    assert not os.path.exists(repo / "var")  # no side effects
