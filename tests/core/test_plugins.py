"""The plugin host: bundled plugins come through the entry-point group like any vendor's, allow and
block lists filter them, mistakes fail startup, and a separately installed vendor package delivers."""

from __future__ import annotations

import argparse
import json
import types
from pathlib import Path

import pytest
from lxml import etree
from vendor_install import pip_install_target

import gateway_filesystem
from core.support import incoming, write_config
from gateway import __version__
from gateway.adapters.base import AdapterType
from gateway.cli import build_parser, main
from gateway.config import load_config
from gateway.errors import ConfigError, ConfigErrors
from gateway.hookspecs import hookimpl
from gateway.model import MessageState
from gateway.plugins import PluginHost, resolve
from gateway.runtime import build_runtime
from gateway.xoev.identity import MessageIdentity
from gateway.xoev.understanding import identify

ACME_MODULE = '''
"""ACME Fachverfahren adapter: writes each message's data part to <inbox>/<id>.bin."""
from pathlib import Path

from gateway.adapters.base import AdapterType, DeliveryResult
from gateway.errors import ConfigError
from gateway.hookspecs import hookimpl


class AcmeAdapter:
    def __init__(self, name, inbox):
        self.name = name
        self.inbox = inbox

    async def deliver(self, delivery):
        chunks = [c async for c in delivery.blobs.iter_chunks(delivery.envelope.data)]
        target = self.inbox / f"{delivery.idempotency_key}.bin"
        target.write_bytes(b"".join(chunks))
        return DeliveryResult.delivered(reference=f"acme-{delivery.attempt}")

    async def check(self):
        return None if self.inbox.is_dir() else "inbox missing"

    async def close(self):
        return None


def create(ctx, options):
    if set(options) != {"inbox"}:
        raise ConfigError("exactly one option: inbox", key="inbox")
    inbox = ctx.base_dir / options["inbox"]
    inbox.mkdir(parents=True, exist_ok=True)
    return AcmeAdapter(ctx.name, inbox)


@hookimpl
def gateway_adapter_types():
    return [AdapterType("acme", create, "ACME Fachverfahren")]
'''

ACME_PYPROJECT = """
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "acme-gateway-adapter"
version = "1.2.3"
requires-python = ">=3.11"

[project.entry-points.gateway]
acme = "acme_gateway_adapter"
acme-broken = "acme_broken"

[tool.setuptools]
py-modules = ["acme_gateway_adapter", "acme_broken"]
"""


@pytest.fixture(scope="module")
def acme_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway vendor package, built and installed with pip into its own target directory."""
    root = tmp_path_factory.mktemp("acme")
    pkg = root / "acme-gateway-adapter"
    pkg.mkdir()
    (pkg / "pyproject.toml").write_text(ACME_PYPROJECT, encoding="utf-8")
    (pkg / "acme_gateway_adapter.py").write_text(ACME_MODULE, encoding="utf-8")
    (pkg / "acme_broken.py").write_text('raise ImportError("vendor bug")\n', encoding="utf-8")
    target = pip_install_target(pkg, root / "site")
    assert (target / "acme_gateway_adapter.py").is_file()
    return target


@pytest.fixture
def acme(acme_site: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(acme_site))
    return acme_site


def test_bundled_plugins_come_through_entry_points() -> None:
    host = PluginHost.load()
    infos = {i.name: i for i in host.infos}
    for name in ("filesystem", "webhook"):
        info = infos[name]
        assert (info.distribution, info.version, info.builtin) == ("ozg-gateway", __version__, False)
        assert info.adapter_types == (name,)
        assert info.module == f"gateway_{name}"
    assert infos["gateway.sources.fitconnect.plugin"].builtin  # the channels: entry-point group gateway.builtin
    assert infos["gateway.xoev.subsystem"].builtin
    assert {"filesystem", "webhook"} <= set(host.adapter_types)


def test_cli_plugins_lists_bundled_adapters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(tmp_path / "absent.toml")  # no config file: every installed plugin
    assert main(["plugins", "--config", config]) == 0
    lines = capsys.readouterr().out.splitlines()
    fs = next(line for line in lines if line.startswith("filesystem "))
    assert f"ozg-gateway {__version__}" in fs
    assert fs.rstrip().endswith("adapter:filesystem")
    wh = next(line for line in lines if line.startswith("webhook "))
    assert f"ozg-gateway {__version__}" in wh
    assert wh.rstrip().endswith("adapter:webhook")
    assert main(["plugins", "--config", config, "--json"]) == 0
    import json

    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["webhook"] == {
        "name": "webhook",
        "distribution": "ozg-gateway",
        "version": __version__,
        "builtin": False,
        "adapter_types": ["webhook"],
        "source_types": [],
        "reply_channel_types": [],
    }


def test_block_and_allow_lists() -> None:
    blocked = PluginHost.load(block=["webhook"])
    assert "webhook" not in {i.name for i in blocked.infos}
    assert "webhook" not in blocked.adapter_types
    assert "filesystem" in blocked.adapter_types
    allowed = PluginHost.load(allow=["filesystem"])
    assert set(allowed.adapter_types) == {"filesystem"}
    assert {i.name for i in allowed.infos if not i.builtin} == {"filesystem"}
    with pytest.raises(ConfigError, match="allow-listed plugins are not installed: nope") as info:
        PluginHost.load(allow=["filesystem", "nope"])
    assert info.value.key == "plugins.allow"


def test_config_block_list_applies_to_the_runtime(tmp_path: Path) -> None:
    text = '[plugins]\nblock = ["webhook"]\n[adapters.hook]\ntype = "webhook"\nurl = "http://127.0.0.1:9/x"\n'
    with pytest.raises(ConfigErrors) as info:
        build_runtime(load_config(write_config(tmp_path, text)))
    (error,) = info.value.errors
    assert error.key == "adapters.hook.type"
    assert error.reason.startswith("unknown adapter type 'webhook'")


def test_misspelt_hook_fails_startup() -> None:
    vendor = types.ModuleType("vendor_typo")

    @hookimpl
    def gateway_adpater_types() -> list[AdapterType]:
        return []

    vendor.gateway_adpater_types = gateway_adpater_types  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="plugin implements an unknown hook") as info:
        PluginHost.load(entry_points_enabled=False, extra=[vendor])
    assert "gateway_adpater_types" in str(info.value)


def test_duplicate_adapter_type_fails_startup() -> None:
    copycat = types.ModuleType("copycat")

    @hookimpl
    def gateway_adapter_types() -> list[AdapterType]:
        return [AdapterType("filesystem", gateway_filesystem.create, "a second filesystem")]

    copycat.gateway_adapter_types = gateway_adapter_types  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match=r"adapter type 'filesystem' is provided by two plugins \(second: copycat\)"):
        PluginHost.load(extra=[copycat])


def test_duplicate_source_type_fails_startup() -> None:
    from core.support import FakeSourcePlugin

    second = FakeSourcePlugin()
    second.__name__ = "another-fake-source"
    with pytest.raises(ConfigError, match=r"source type 'fake' is provided by two plugins \(second: another-fake"):
        PluginHost.load(entry_points_enabled=False, extra=[FakeSourcePlugin(), second])


def test_source_types_hook(tmp_path: Path) -> None:
    from core.support import FakeSourcePlugin

    plugin = FakeSourcePlugin()
    host = PluginHost.load(entry_points_enabled=False, extra=[plugin])
    assert host.source_types["fake"].description == "test source"
    assert next(i for i in host.infos if i.name == "fake-source-plugin").source_types == ("fake",)
    text = (
        '[sources.inbox]\ntype = "fake"\naccept_policy = "stored"\n[sources.bad]\ntype = "fake"\naccept_policy = "x"\n'
    )
    with pytest.raises(ConfigErrors) as info:
        build_runtime(load_config(write_config(tmp_path, text)), plugins=host)
    assert [(e.key, e.reason) for e in info.value.errors] == [
        ("sources.bad.accept_policy", "must be 'delivered' or 'stored'")
    ]
    runtime = build_runtime(load_config(write_config(tmp_path, text.split("[sources.bad]")[0])), plugins=host)
    assert runtime.accept_policy("inbox") == "stored"
    assert runtime.accept_policy("other") == "delivered"
    assert plugin.contexts["inbox"].options_key == "sources.inbox"


def test_xoev_identify_first_result_wins() -> None:
    calls: list[str] = []

    class NotMine:
        __name__ = "not-mine"

        @hookimpl
        def gateway_xoev_identify(self, namespace: str, local_name: str, root: etree._Element) -> None:
            calls.append("not-mine")
            return None

    class XBau:
        __name__ = "xbau"

        @hookimpl
        def gateway_xoev_identify(self, namespace: str, local_name: str, root: etree._Element) -> MessageIdentity:
            calls.append("xbau")
            return MessageIdentity("xbau", "2.3", local_name, namespace, message_id=root.get("id"))

    root = etree.fromstring(b'<b:baugenehmigung.antrag.0200 xmlns:b="urn:xbau" id="m-1"/>')
    host = PluginHost.load(entry_points_enabled=False, extra=[XBau(), NotMine()])
    identity = identify(host.pm.hook, root)
    assert identity == MessageIdentity("xbau", "2.3", "baugenehmigung.antrag.0200", "urn:xbau", message_id="m-1")
    assert calls == ["not-mine", "xbau"]  # later-registered first (pluggy LIFO); stops at the first answer
    hook = PluginHost.load(entry_points_enabled=False, extra=[NotMine()]).pm.hook
    assert hook.gateway_xoev_identify(namespace="urn:x", local_name="y", root=root) is None


def test_add_commands_hook(capsys: pytest.CaptureFixture[str]) -> None:
    class Hello:
        __name__ = "hello-plugin"

        @hookimpl
        def gateway_add_commands(self, subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
            parser = subparsers.add_parser("hello", help="say hello")
            parser.add_argument("--name", default="world")
            parser.set_defaults(func=lambda args: print(f"hello {args.name}") or 0)

    parser = build_parser(PluginHost.load(entry_points_enabled=False, extra=[Hello()]))
    args = parser.parse_args(["hello", "--name", "gateway"])
    assert args.func(args) == 0
    assert capsys.readouterr().out == "hello gateway\n"
    # The built-in plugin adds the subsystem commands through the same hook.
    builtin = build_parser(PluginHost.load(entry_points_enabled=False))
    commands = builtin._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert "hello" not in commands
    assert {"keys", "schemas"} <= set(commands)


async def test_resolve_async_convention() -> None:
    async def later() -> int:
        return 2

    assert await resolve(1) == 1
    assert await resolve(later()) == 2


def test_vendor_package_import_error_names_the_plugin(acme: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"plugin 'acme-broken' \(acme_broken\) failed to import: ImportError: vendor bug"
    ):
        PluginHost.load()


def test_vendor_package_is_discovered(acme: Path) -> None:
    host = PluginHost.load(block=["acme-broken"])
    info = next(i for i in host.infos if i.name == "acme")
    assert (info.distribution, info.version, info.module, info.builtin) == (
        "acme-gateway-adapter",
        "1.2.3",
        "acme_gateway_adapter",
        False,
    )
    assert info.adapter_types == ("acme",)
    assert host.adapter_types["acme"].description == "ACME Fachverfahren"
    assert {"filesystem", "webhook", "acme"} <= set(host.adapter_types)
    only = PluginHost.load(allow=["acme"])
    assert set(only.adapter_types) == {"acme"}


async def test_vendor_adapter_delivers_end_to_end(acme: Path, tmp_path: Path) -> None:
    text = """
[plugins]
block = ["acme-broken"]

[adapters.vendor]
type = "acme"
inbox = "acme-inbox"

[[routes]]
name = "all"
adapter = "vendor"
"""
    runtime = build_runtime(load_config(write_config(tmp_path, text)))  # plugins from entry points
    assert type(runtime.adapters["vendor"]).__module__ == "acme_gateway_adapter"
    runtime.blobs.open()
    await runtime.store.open()
    try:
        data = await runtime.blobs.write_bytes(b"<antrag/>", name="data", media_type="application/xml")
        mid = (await runtime.intake.receive(incoming("fit", data=data))).message.envelope.id
        assert await runtime.worker.deliver_once() == 1
        stored = await runtime.store.get(mid)
        assert stored is not None
        assert stored.envelope.state is MessageState.ACKNOWLEDGED
        assert (tmp_path / "acme-inbox" / f"{mid}.bin").read_bytes() == b"<antrag/>"
        trail = await runtime.store.audit_trail(mid)
        assert next(r for r in trail if r.to_state == "delivered").details == {"reference": "acme-1"}
    finally:
        await runtime.store.close()


def test_vendor_options_validated_by_check_config(
    acme: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = '[plugins]\nblock = ["acme-broken"]\n[adapters.vendor]\ntype = "acme"\ninbx = "x"\n'
    path = write_config(tmp_path, text)
    assert main(["check-config", str(path)]) == 2
    assert f"error: {path}: adapters.vendor.inbox: exactly one option: inbox" in capsys.readouterr().err


def test_plugins_options_prints_what_a_type_declares(capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main

    assert main(["plugins", "--options", "adapter:filesystem", "-c", "/nonexistent.toml"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith('[adapters.NAME] type = "filesystem": ')
    assert "directory  (path; required)\n    The folder the Fachverfahren reads from" in out
    assert 'layout  (string; default "{id}")' in out
    assert main(["plugins", "--options", "xoev", "--json", "-c", "/nonexistent.toml"]) == 0
    described = json.loads(capsys.readouterr().out)
    keys = [o["key"] for o in described["options"]]
    assert described["kind"] == "subsystem"
    assert {"workers", "bundles[].name", "bundles[].entries", "signing.key"} <= set(keys)
    assert main(["plugins", "--options", "carrier-pigeon", "-c", "/nonexistent.toml"]) == 2
    assert "no adapter, source or subsystem type 'carrier-pigeon'" in capsys.readouterr().err
