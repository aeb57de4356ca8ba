"""docs/configuration.md's option tables are the declarations' (regenerate: python -m gateway.options.docs FILE)."""

from __future__ import annotations

from pathlib import Path

from gateway.config import SECTIONS
from gateway.options.docs import update_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_generated_tables_are_current() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert update_markdown(text) == text, "run: python -m gateway.options.docs docs/configuration.md"


def test_every_core_table_is_generated() -> None:
    text = DOC.read_text(encoding="utf-8")
    for cls in (*SECTIONS.values(),):
        assert f"<!-- options: gateway.config.{cls.__name__} -->" in text
    for name in ("gateway.config.RetryPolicy", "gateway.routing.Route", "gateway.routing.RouteMatch"):
        assert f"<!-- options: {name} -->" in text
