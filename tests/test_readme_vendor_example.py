"""The README's "Writing an adapter plugin" package, taken verbatim from README.md, built and installed
with pip like a vendor would ship it, discovered through its entry point and delivering a message."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest
from vendor_install import pip_install_target

from gateway.config import parse_config
from gateway.errors import ConfigErrors
from gateway.model import MessageState, RoutingKeys, SourceRef
from gateway.pipeline.intake import IncomingMessage
from gateway.plugins import PluginHost
from gateway.runtime import build_runtime

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def _block(label: str) -> str:
    match = re.search(rf"`{re.escape(label)}`[^\n]*:\n```[a-z]*\n(.*?)\n```", README, re.S)
    assert match, f"README has no code block for {label}"
    return match.group(1) + "\n"


@pytest.fixture(scope="module")
def vendor_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vendor")
    pkg = root / "acme-gateway-adapter"
    (pkg / "acme_gateway_adapter").mkdir(parents=True)
    (pkg / "tests").mkdir()
    (pkg / "pyproject.toml").write_text(_block("pyproject.toml"), encoding="utf-8")
    (pkg / "acme_gateway_adapter" / "__init__.py").write_text(_block("acme_gateway_adapter/__init__.py"))
    (pkg / "tests" / "test_acme.py").write_text(_block("tests/test_acme.py"), encoding="utf-8")
    target = pip_install_target(pkg, root / "site")
    # The package's own test (from the README) is imported from the install target under a unique name.
    (target / "readme_test_acme.py").write_text(_block("tests/test_acme.py"), encoding="utf-8")
    return target


def test_readme_vendor_package_installs_registers_and_delivers(
    vendor_site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another test installs a different package with the same module name (the README's name is the
    # natural one): make sure this test imports the README's code, not a module cached before.
    for name in [m for m in sys.modules if m == "acme_gateway_adapter" or m.startswith("acme_gateway_adapter.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(vendor_site))
    host = PluginHost.load()
    info = next(i for i in host.infos if i.name == "acme")
    assert (info.distribution, info.version, info.adapter_types) == ("acme-gateway-adapter", "1.0.0", ("acme",))

    import readme_test_acme  # the README's own test for the package

    readme_test_acme.test_acme_type_is_registered()

    config = parse_config(
        {
            "store": {"path": str(tmp_path / "db.sqlite"), "blob_dir": str(tmp_path / "blobs")},
            "adapters": {"acme-prod": {"type": "acme", "endpoint": "https://fv.example/api"}},
            "routes": [{"name": "all", "adapter": "acme-prod"}],
        },
        file=tmp_path / "gateway.toml",
    )

    async def scenario() -> MessageState:
        runtime = build_runtime(config, plugins=host)
        await runtime.store.open()
        runtime.blobs.open()
        try:
            blob = await runtime.blobs.write_bytes(b"<antrag/>", name="data", media_type="application/xml")
            received = await runtime.intake.receive(
                IncomingMessage(source=SourceRef("test", "test", "r1", "r1"), routing=RoutingKeys(), data=blob)
            )
            assert await runtime.worker.deliver_once() == 1
            stored = await runtime.store.get(received.message.envelope.id)
            assert stored is not None
            return stored.envelope.state
        finally:
            await runtime.store.close()

    assert asyncio.run(scenario()) is MessageState.ACKNOWLEDGED

    bad = parse_config(
        {
            "adapters": {"acme-prod": {"type": "acme", "endpoint": 1}},
            "routes": [{"name": "all", "adapter": "acme-prod"}],
        },
        file=tmp_path / "gateway.toml",
    )
    with pytest.raises(ConfigErrors, match=re.escape("adapters.acme-prod.endpoint: is required (a URL)")):
        build_runtime(bad, plugins=host)
