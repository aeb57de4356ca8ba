from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway_filesystem.filenames import (
    MAX_NAME_BYTES,
    SLASH_LOOKALIKES,
    NameAllocator,
    data_filename,
    extension_for,
    sanitize_filename,
)

NASTY = [
    ("../../etc/passwd", "passwd"),
    ("..\\..\\windows\\system32\\config", "config"),
    ("/etc/shadow", "shadow"),
    ("C:\\Users\\erika\\Antrag.pdf", "Antrag.pdf"),
    ("C:Antrag.pdf", "Antrag.pdf"),
    ("\\\\server\\share\\scan.tif", "scan.tif"),
    ("dir/sub/", None),
    ("..", None),
    (".", None),
    ("...", None),
    ("", None),
    (None, None),
    ("\x00", None),
    (" . . ", None),
    (".bashrc", "bashrc"),
    ("...hidden.pdf", "hidden.pdf"),
    ("a\x00b.pdf", "ab.pdf"),
    ("a\nb\rc\td.pdf", "abcd.pdf"),
    ("Bau  antrag\u00a0final.pdf", "Bau antrag final.pdf"),
    ("CON", "_CON"),
    ("con.txt", "_con.txt"),
    ("Nul.tar.gz", "_Nul.tar.gz"),
    ("LPT1.pdf", "_LPT1.pdf"),
    ("COM¹.txt", "_COM¹.txt"),
    ("aux .pdf", "_aux.pdf"),
    ("CONTRACT.pdf", "CONTRACT.pdf"),
    ("rechnung\u202efdp.exe", "rechnungfdp.exe"),
    ('a<b>c:d"e|f?g*h.pdf', "a_b_c_d_e_f_g_h.pdf"),
    ("Antrag. . .", "Antrag"),
    ("  Lage plan .pdf  ", "Lage plan.pdf"),
    ("ｆｕｌｌ／width＼name.pdf", "ｆｕｌｌ_width_name.pdf"),
    ("a\u2024\u2025b.pdf", "a__b.pdf"),
    ("Mu\u0308ller.pdf", "Müller.pdf"),
    ("résumé.PDF", "résumé.PDF"),
    ("a\u2028b", "ab"),
    ("..\u2215..\u2215etc\u2215passwd", "_.._etc_passwd"),  # DIVISION SLASH
    ("a\u2044b.pdf", "a_b.pdf"),  # FRACTION SLASH
    ("a\u29f8b\u2571c\u27cbd\U0001f67ce.pdf", "a_b_c_d_e.pdf"),
    ("C\u2216Users\u29f5x\u29f9y\u2572z.pdf", "C_Users_x_y_z.pdf"),  # backslash look-alikes
    ("\u30ce\u30fc\u30c8.pdf", "\u30ce\u30fc\u30c8.pdf"),  # a katakana word (ノート) stays
]


def test_every_slash_lookalike_becomes_underscore() -> None:
    for ch in SLASH_LOOKALIKES:
        assert sanitize_filename(f"a{ch}b.pdf") == "a_b.pdf", hex(ord(ch))


@pytest.mark.parametrize(("raw", "expected"), NASTY)
def test_nasty_names(raw: str | None, expected: str | None) -> None:
    assert sanitize_filename(raw) == expected


def test_long_names_keep_extension_and_fit() -> None:
    ascii_name = sanitize_filename("a" * 300 + ".pdf")
    assert ascii_name is not None
    assert ascii_name.endswith(".pdf")
    assert len(ascii_name.encode()) <= MAX_NAME_BYTES
    umlauts = sanitize_filename("ä" * 300 + ".pdf")
    assert umlauts is not None
    assert umlauts.endswith(".pdf")
    assert len(umlauts.encode()) <= MAX_NAME_BYTES
    assert set(umlauts.removesuffix(".pdf")) == {"ä"}  # cut at a character boundary


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=300))
def test_any_input_stays_a_single_safe_component(raw: str) -> None:
    name = sanitize_filename(raw)
    if name is None:
        return
    assert name == unicodedata.normalize("NFC", name)
    assert not name.startswith((".", " "))
    assert not name.endswith((".", " "))
    assert not set(name) & set('/\\<>:"|?*\x00')
    assert all(unicodedata.category(c) not in {"Cc", "Cf", "Cs", "Zl", "Zp"} for c in name)
    assert len(name.encode()) <= MAX_NAME_BYTES
    base = Path("/srv/out")
    assert (base / name).parent == base
    assert name not in (".", "..")


def test_allocator_never_reuses_a_name_ignoring_case() -> None:
    names = NameAllocator(reserved=("manifest.json", "data.json"))
    got = [names.allocate(n) for n in ["a.pdf", "A.PDF", "a.pdf", "manifest.json", "DATA.json", "a-2.pdf"]]
    assert got == ["a.pdf", "A-2.PDF", "a-3.pdf", "manifest-2.json", "DATA-2.json", "a-2-2.pdf"]
    assert len({n.casefold() for n in got}) == len(got)


@pytest.mark.parametrize(
    ("media_type", "ext", "data_name"),
    [
        ("application/json", ".json", "data.json"),
        ("application/fhir+json; charset=utf-8", ".json", "data.json"),
        ("application/xml", ".xml", "data.xml"),
        ("text/xml", ".xml", "data.xml"),
        ("application/xbau+xml", ".xml", "data.xml"),
        ("application/pdf", ".pdf", "data.bin"),
        ("application/x-unknown", ".bin", "data.bin"),
    ],
)
def test_extensions(media_type: str, ext: str, data_name: str) -> None:
    assert extension_for(media_type) == ext
    assert data_filename(media_type) == data_name
