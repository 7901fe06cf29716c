"""fastsync.files.write_atomically: the old file or the new one, never half of either."""

from __future__ import annotations

import os

import pytest

from fastsync.files import write_atomically


def test_writes_text_and_bytes_and_replaces_the_old_file(tmp_path):
    path = tmp_path / "report.json"
    assert write_atomically(path, "first") == path
    assert path.read_text() == "first"
    write_atomically(path, b"\x00second")
    assert path.read_bytes() == b"\x00second"
    assert os.listdir(tmp_path) == ["report.json"]


def test_a_failed_write_leaves_the_old_file_and_no_partial(tmp_path, monkeypatch):
    path = tmp_path / "cache.json"
    path.write_text("old")

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="No space"):
        write_atomically(path, "new")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["cache.json"]


def test_two_writers_use_their_own_partial_files(tmp_path, monkeypatch):
    """Each call's partial name is its own: a second writer cannot truncate the first's."""
    seen = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: seen.append(os.path.basename(src)) or real(src, dst))
    for text in ("a", "b"):
        write_atomically(tmp_path / "x.json", text)
    assert len(set(seen)) == 2 and all(name.startswith(".x.json.") for name in seen)
