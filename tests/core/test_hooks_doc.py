"""Every hook in gateway/hookspecs.py is documented in docs/hooks.md (with its exact signature and
its firstresult flag) and exercised by at least one test."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
# The core's hooks and the hooks channels add (a channel plugin's HOOKSPECS module).
HOOKSPEC_MODULES = (REPO_ROOT / "gateway" / "hookspecs.py", REPO_ROOT / "gateway" / "xoev" / "hookspecs.py")
HOOKS_MD = REPO_ROOT / "docs" / "hooks.md"


def hookspecs() -> list[tuple[str, str, bool]]:
    """(name, signature, firstresult) of every ``@hookspec`` function."""
    specs = []
    for node in (n for m in HOOKSPEC_MODULES for n in ast.parse(m.read_text(encoding="utf-8")).body):
        if not isinstance(node, ast.FunctionDef) or not node.name.startswith("gateway_"):
            continue
        decorators = [ast.unparse(d) for d in node.decorator_list]
        assert any(d.startswith("hookspec") for d in decorators), f"{node.name} is not a @hookspec"
        firstresult = any("firstresult=True" in d for d in decorators)
        returns = f" -> {ast.unparse(node.returns)}" if node.returns else ""
        specs.append((node.name, f"def {node.name}({ast.unparse(node.args)}){returns}", firstresult))
    return specs


SPECS = hookspecs()


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).replace("( ", "(").replace(" )", ")").replace(", )", ")")


def section(doc: str, name: str) -> str:
    match = re.search(rf"^##+ `?{name}`?\s*$(.*?)(?=^## |\Z)", doc, re.MULTILINE | re.DOTALL)
    assert match, f"docs/hooks.md has no section for {name}"
    return match.group(1)


def test_hookspecs_are_found() -> None:
    names = [name for name, _sig, _first in SPECS]
    assert len(names) >= 6
    assert "gateway_adapter_types" in names
    assert len(set(names)) == len(names)


@pytest.mark.parametrize(("name", "signature", "firstresult"), SPECS, ids=[s[0] for s in SPECS])
def test_hook_is_documented(name: str, signature: str, firstresult: bool) -> None:
    doc = HOOKS_MD.read_text(encoding="utf-8")
    text = section(doc, name)
    assert normalise(signature) in normalise(text), f"signature of {name} missing or outdated in docs/hooks.md"
    flag = re.search(r"firstresult:\s*\**(yes|no)", text, re.IGNORECASE)
    assert flag, f"docs/hooks.md does not say whether {name} is firstresult"
    assert (flag.group(1).lower() == "yes") == firstresult


@pytest.mark.parametrize("name", [s[0] for s in SPECS])
def test_hook_is_exercised_by_a_test(name: str) -> None:
    this = Path(__file__).resolve()
    users = [
        p
        for p in (REPO_ROOT / "tests").rglob("*.py")
        if p.resolve() != this and re.search(rf"\b{name}\b", p.read_text(encoding="utf-8"))
    ]
    assert users, f"no test under tests/ refers to {name}"


def test_no_documented_hook_is_unknown() -> None:
    doc = HOOKS_MD.read_text(encoding="utf-8")
    documented = set(re.findall(r"^##+ `?(gateway_\w+)`?\s*$", doc, re.MULTILINE))
    assert documented == {name for name, _s, _f in SPECS}
