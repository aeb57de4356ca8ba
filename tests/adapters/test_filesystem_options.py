from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from adapters.blobdir import make_context
from gateway.errors import ConfigErrors
from gateway_filesystem import FilesystemAdapter, create
from gateway_filesystem.layout import Layout


@pytest.mark.parametrize(
    ("options", "key", "reason_part"),
    [
        ({}, "directory", "required"),
        ({"directory": ""}, "directory", "must be a non-empty path"),
        ({"directory": 5}, "directory", "expected str, got int"),
        (
            {"directory": "out", "dirctory": "typo"},
            "dirctory",
            "unknown key (known: dir_mode, directory, file_mode, fsync, layout)",
        ),
        ({"directory": "out", "layout": 1}, "layout", "must be a string"),
        ({"directory": "out", "layout": "{id}/{received_date}"}, "layout", "last path segment"),
        ({"directory": "out", "layout": "../{id}"}, "layout", "must not start with '.'"),
        ({"directory": "out", "layout": ".hidden/{id}"}, "layout", "must not start with '.'"),
        ({"directory": "out", "layout": "/abs/{id}"}, "layout", "relative path"),
        ({"directory": "out", "layout": "a\\b/{id}"}, "layout", "relative path"),
        ({"directory": "out", "layout": "{sender}/{id}"}, "layout", "unknown placeholder"),
        ({"directory": "out", "layout": "{id!r}"}, "layout", "last path segment"),
        ({"directory": "out", "layout": "{received_date:%Y}/{id}"}, "layout", "unknown placeholder"),
        ({"directory": "out", "layout": "{received_date.year}/{id}"}, "layout", "unknown placeholder"),
        ({"directory": "out", "layout": "a b/{id}"}, "layout", "literal text"),
        ({"directory": "out", "layout": "a//{id}"}, "layout", "empty path segment"),
        ({"directory": "out", "layout": "{/{id}"}, "layout", "placeholder syntax"),
        ({"directory": "out", "layout": "{id}/{id}"}, "layout", "last path segment"),
        ({"directory": "out", "layout": "a/b/c/d/e/{id}"}, "layout", "at most 5"),
        ({"directory": "out", "fsync": "yes"}, "fsync", "expected bool, got str"),
        ({"directory": "out", "fsync": 1}, "fsync", "expected bool, got int"),
        ({"directory": "out", "dir_mode": "rwx"}, "dir_mode", "not an octal mode"),
        ({"directory": "out", "dir_mode": True}, "dir_mode", "octal string"),
        ({"directory": "out", "dir_mode": 0o4755}, "dir_mode", "between 0 and 0o777"),
        ({"directory": "out", "dir_mode": "0550"}, "dir_mode", "owner at least 700"),
        ({"directory": "out", "file_mode": 0o200}, "file_mode", "owner at least 400"),
        ({"directory": "out", "file_mode": 1.5}, "file_mode", "octal string"),
    ],
)
def test_bad_options(tmp_path: Path, options: dict[str, Any], key: str, reason_part: str) -> None:
    with pytest.raises(ConfigErrors) as raised:
        create(make_context(tmp_path), options)
    (error,) = raised.value.errors
    assert error.key == key
    assert reason_part in error.reason


def test_creates_relative_directory_against_base_dir(tmp_path: Path) -> None:
    adapter = create(make_context(tmp_path), {"directory": "deep/er/out", "dir_mode": "0o750", "fsync": False})
    assert isinstance(adapter, FilesystemAdapter)
    assert adapter.options.directory == (tmp_path / "deep/er/out").resolve()
    assert adapter.options.directory.is_dir()
    assert adapter.options.dir_mode == 0o750
    assert adapter.options.fsync is False
    assert adapter.name == "test-adapter"
    assert os.listdir(adapter.options.directory) == []  # the writability probe cleaned up


def test_directory_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigErrors) as raised:
        create(make_context(tmp_path), {"directory": "file/out"})
    (error,) = raised.value.errors
    assert error.key == "directory"
    assert "cannot create" in error.reason


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_directory_not_writable(tmp_path: Path) -> None:
    (tmp_path / "ro").mkdir(mode=0o555)
    with pytest.raises(ConfigErrors) as raised:
        create(make_context(tmp_path), {"directory": "ro"})
    (error,) = raised.value.errors
    assert error.key == "directory"
    assert "not writable" in error.reason


@pytest.mark.parametrize(
    "text", ["{id}", "{received_date}/{id}", "{channel}/{received_year}/{received_month}/{id}", "in-box_1.x/{id}"]
)
def test_good_layouts(text: str) -> None:
    assert Layout.parse(text).text == text
