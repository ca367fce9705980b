"""The one atomic-write helper (mrfengine._atomic) and what relies on its temporary names."""

from __future__ import annotations

import gzip
import os
import re
import stat
import threading

import numpy as np
import pytest

from mrfengine import _atomic
from mrfengine._atomic import atomic_path, atomic_write_bytes, atomic_write_text, temp_pattern
from mrfengine.dictionary.build import DictionaryCache
from mrfengine.errors import ValidationError
from mrfengine.io.nifti import save_nifti


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- success
@pytest.mark.parametrize("fsync", [False, True])
def test_success_renames_over_the_destination(tmp_path, fsync):
    dest = tmp_path / "table.txt"
    dest.write_text("old\n")
    seen = []
    with atomic_path(dest, fsync=fsync) as tmp:
        seen.append(tmp)
        assert tmp.parent == tmp_path and tmp.is_file() and tmp.stat().st_size == 0
        assert tmp.name.startswith(".table.txt.tmp-")
        tmp.write_text("new\n")
        assert dest.read_text() == "old\n"  # nothing visible before the block ends
    assert dest.read_text() == "new\n"
    assert not seen[0].exists()
    assert _names(tmp_path) == ["table.txt"]


def test_text_and_bytes_conveniences(tmp_path):
    out = atomic_write_text(str(tmp_path / "a.json"), '{"T1": "ms \u00b5"}\n')
    assert out == tmp_path / "a.json" and out.read_bytes() == '{"T1": "ms \u00b5"}\n'.encode()
    out = atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01" * 1000)
    assert out.read_bytes() == b"\x00\x01" * 1000
    assert _names(tmp_path) == ["a.json", "b.bin"]


@pytest.mark.skipif(os.name == "nt", reason="POSIX permission bits")
def test_destination_has_the_permissions_of_a_plain_write(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "a.txt").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == 0o640


def test_a_name_near_the_file_system_limit(tmp_path):
    dest = tmp_path / ("m" * 245 + ".nii.gz")  # 252 bytes: the temporary must be shortened
    with atomic_path(dest, suffix=".nii.gz") as tmp:
        assert len(tmp.name.encode()) <= 255 and tmp.name.endswith(".nii.gz")
        tmp.write_bytes(b"data")
    assert dest.read_bytes() == b"data"
    assert _names(tmp_path) == [dest.name]


# --------------------------------------------------------------------------- failure
@pytest.mark.parametrize("error", [RuntimeError("writer failed"), KeyboardInterrupt()])
def test_failure_keeps_the_old_destination_and_leaves_no_temporary(tmp_path, error):
    dest = tmp_path / "checkpoint.pt"
    dest.write_bytes(b"complete old version")
    with pytest.raises(type(error)):
        with atomic_path(dest) as tmp:
            tmp.write_bytes(b"half a new ver")  # a writer that dies part-way
            raise error
    assert dest.read_bytes() == b"complete old version"
    assert _names(tmp_path) == ["checkpoint.pt"]


def test_failure_without_an_old_destination_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="bad"):
        with atomic_path(tmp_path / "new.txt") as tmp:
            tmp.write_text("partial")
            raise ValueError("bad")
    assert _names(tmp_path) == []


def test_failed_rename_removes_the_temporary(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "inside").write_text("kept")
    with pytest.raises(OSError):
        atomic_write_text(tmp_path / "out", "text")  # a folder is not replaced
    assert _names(tmp_path) == ["out"] and (tmp_path / "out" / "inside").read_text() == "kept"


def test_missing_folder_is_an_error_and_leaves_nothing(tmp_path):
    with pytest.raises(FileNotFoundError):
        atomic_write_text(tmp_path / "nowhere" / "a.txt", "x")
    assert _names(tmp_path) == []


# --------------------------------------------------------------------------- uniqueness
def test_two_threads_writing_one_destination_never_collide(tmp_path):
    dest = tmp_path / "sub-01_T1map.json"
    payloads = [bytes([65 + i]) * (2 << 20) for i in range(2)]  # 2 MiB each, distinct
    both_open = threading.Barrier(2, timeout=30)
    temps, errors = [], []

    def write(data):
        try:
            with atomic_path(dest) as tmp:
                temps.append(tmp)
                both_open.wait()  # both temporaries exist at once
                with open(tmp, "wb") as fh:
                    for i in range(0, len(data), 1 << 16):
                        fh.write(data[i:i + (1 << 16)])
                both_open.wait()  # both written before either renames
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len({t.name for t in temps}) == 2
    assert dest.read_bytes() in payloads  # one complete version, not a mix
    assert _names(tmp_path) == [dest.name]


def test_an_existing_file_under_the_drawn_name_is_never_reused(tmp_path, monkeypatch):
    draws = iter(["0badc0de", "0badc0de", "12345678"])
    monkeypatch.setattr(_atomic.secrets, "token_hex", lambda n: next(draws))
    dest = tmp_path / "a.txt"
    with atomic_path(dest) as first:
        first.write_text("first")
        with atomic_path(dest) as second:  # same process, thread and draw: the name is taken
            assert second != first and second.name.endswith("-12345678")
            assert first.read_text() == "first"  # not truncated by the second write
            second.write_text("second")
        assert dest.read_text() == "second" and first.read_text() == "first"
    assert dest.read_text() == "first"
    assert _names(tmp_path) == ["a.txt"]


# --------------------------------------------------------------------------- suffix
def test_suffix_is_kept_and_nibabel_compresses(tmp_path):
    dest = tmp_path / "sub-01_T1map.nii.gz"
    with atomic_path(dest, suffix=".nii.gz") as tmp:
        assert tmp.name.startswith(".sub-01_T1map.tmp-") and tmp.name.endswith(".nii.gz")
        tmp.write_bytes(b"x")
    save_nifti(np.arange(24, dtype=np.float32).reshape(2, 3, 4), np.eye(4), dest)
    with gzip.open(dest) as fh:  # compressed: the writer saw the .nii.gz name
        assert len(fh.read()) > 24 * 4
    assert _names(tmp_path) == [dest.name]


def test_a_suffix_that_is_not_a_tail_of_the_name(tmp_path):
    with pytest.raises(ValidationError, match="suffix"):
        with atomic_path(tmp_path / "a.nii", suffix=".nii.gz"):
            pass
    with pytest.raises(ValidationError, match="suffix"):
        with atomic_path(tmp_path / ".nii", suffix=".nii"):
            pass
    assert _names(tmp_path) == []


def test_temp_pattern_matches_the_names_drawn(tmp_path):
    with atomic_path(tmp_path / "x.nii.gz", suffix=".nii.gz") as tmp:
        assert re.fullmatch(temp_pattern(r"x", ".nii.gz"), tmp.name)
        assert not re.fullmatch(temp_pattern(r"y", ".nii.gz"), tmp.name)
    with atomic_path(tmp_path / "x.npz") as tmp:
        assert re.fullmatch(temp_pattern(r"x\.npz"), tmp.name)


# --------------------------------------------------------------------------- the dictionary cache
def _stale_temporary(dest):
    """The name a process killed while writing ``dest`` leaves behind, and that file."""
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(dest) as tmp:
            raise KeyboardInterrupt
    return tmp.name


def test_dictionary_cache_recognises_and_clears_stale_temporaries(tmp_path):
    cache = DictionaryCache(tmp_path / "cache")
    cache.root.mkdir()
    key = "0123456789abcdef" * 2
    stale = {_stale_temporary(cache.path(key)), _stale_temporary(cache.root / cache.TAG),
             f".{key}.npz.tmp4242", ".CACHEDIR.TAG.tmp4242"}  # as mrfengine wrote them before
    for name in stale:
        (cache.root / name).write_bytes(b"half")
        assert DictionaryCache.is_own_file(name), name
    assert not DictionaryCache.is_own_file(f".{key}.npz.tmp-1-2-zzzzzzzz")
    assert not DictionaryCache.is_own_file(".notes.txt.tmp-1-2-0123abcd")
    assert cache._prepare()  # only the cache's own files: the folder is tagged
    (cache.root / "notes.txt").write_text("not the cache's")
    n, left, removed = cache.clear()
    assert (n, left, removed) == (len(stale), ["notes.txt"], False)
    assert _names(cache.root) == ["CACHEDIR.TAG", "notes.txt"]
