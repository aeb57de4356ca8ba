"""Supply chain: every imported package is declared, every dependency is bounded and pinned in
constraints.txt, and the image is built from a pinned base with those pins."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
DOCKERFILE = (ROOT / "Dockerfile").read_text(encoding="utf-8")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _runtime_requirements() -> list[Requirement]:
    return [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]


def _constraints() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[_canonical(name)] = version
    return pins


def _imported_top_level_modules(*dirs: Path) -> set[str]:
    found: set[str] = set()
    for directory in dirs:
        for path in directory.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    found.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    found.add(node.module.split(".")[0])
    return found


def test_every_imported_third_party_package_is_declared() -> None:
    declared = {_canonical(r.name) for r in _runtime_requirements()}
    declared |= {_canonical(Requirement(r).name) for r in PYPROJECT["project"]["optional-dependencies"]["postgresql"]}
    own = {"gateway", "gateway_filesystem", "gateway_webhook"}
    distributions = packages_distributions()
    undeclared: list[str] = []
    for module in sorted(_imported_top_level_modules(ROOT / "gateway", ROOT / "plugins") - own):
        if module in sys.stdlib_module_names or module == "__future__":
            continue
        dists = {_canonical(d) for d in distributions.get(module, [module])}
        # psycopg's C part comes with the psycopg[binary] extra; the import names the pure package.
        if not dists & declared:
            undeclared.append(f"{module} ({', '.join(sorted(dists))})")
    assert not undeclared, f"imported but not declared in [project] dependencies: {undeclared}"


def test_runtime_dependencies_have_lower_and_upper_bounds() -> None:
    for req in _runtime_requirements():
        operators = {spec.operator for spec in req.specifier}
        assert ">=" in operators, f"{req.name} has no lower bound"
        assert "<" in operators, f"{req.name} has no upper bound"


def test_postgresql_is_an_extra_not_a_runtime_dependency() -> None:
    assert not any(_canonical(r.name) == "psycopg" for r in _runtime_requirements())
    (pg,) = PYPROJECT["project"]["optional-dependencies"]["postgresql"]
    assert _canonical(Requirement(pg).name) == "psycopg"


def test_constraints_pin_every_declared_dependency_within_its_bounds() -> None:
    pins = _constraints()
    extras = PYPROJECT["project"]["optional-dependencies"]
    requirements = _runtime_requirements() + [Requirement(r) for name in ("postgresql", "test") for r in extras[name]]
    for req in requirements:
        name = _canonical(req.name)
        if name == "ozg-gateway":
            continue
        assert name in pins, f"{req.name} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} violates {req}"


def test_image_is_built_from_a_pinned_base_with_the_constraints() -> None:
    bases = re.findall(r"^FROM (\S+)", DOCKERFILE, flags=re.MULTILINE)
    assert len(bases) == 2
    assert all(re.fullmatch(r"python:3\.11-slim@sha256:[0-9a-f]{64}", base) for base in bases), bases
    assert "--constraint constraints.txt" in DOCKERFILE
    assert "--no-index" in DOCKERFILE  # the final stage installs only the wheels built with the pins
