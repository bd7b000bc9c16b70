"""The one rule for model keys (lms.modelfolder): names only, the same for the daemon's catalog,
``lms ls`` without a daemon and shell completion."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from lms import modelfolder
from lms.inference import catalog
from lms.modelfolder import read_entries, scan, variant_names


@pytest.mark.parametrize(
    ("stems", "variants"),
    [
        (["gemma-3-270m-Q4_K_M", "gemma-3-270m-Q8_0"], ["q4_k_m", "q8_0"]),
        (["tiny-Q4_K_M", "tiny-Q4_K_S"], ["q4_k_m", "q4_k_s"]),  # no cut inside Q4_K_
        (["model.q4", "model.q8", "model.f16"], ["q4", "q8", "f16"]),
        (["a-b", "a-b-c"], ["b", "b-c"]),
        (["First", "second"], ["first", "second"]),  # no common boundary: whole stems
        (["model", "model-q8"], ["model", "model-q8"]),  # one variant would be empty
        (["x-A", "X-a"], ["x-a", "x-a"]),  # not unique even whole: the scan keeps one
    ],
)
def test_variant_names(stems: list[str], variants: list[str]) -> None:
    assert variant_names(stems) == variants


def _touch(path: Path, data: bytes = b"GGUF") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_scan_keys_from_names_only(tmp_path: Path) -> None:
    _touch(tmp_path / "top-Q8_0.gguf")
    _touch(tmp_path / "pub" / "flat.gguf")
    _touch(tmp_path / "pub" / "Multi-GGUF" / "multi-Q4_K_M.gguf")
    _touch(tmp_path / "pub" / "Multi-GGUF" / "multi-Q8_0.gguf")
    _touch(tmp_path / "deep" / "one" / "a" / "b" / "weights.gguf")
    _touch(tmp_path / "deep" / "two" / "x" / "two-F16.gguf")
    _touch(tmp_path / "deep" / "two" / "y" / "z" / "two-Q8_0.gguf")
    _touch(tmp_path / "pub" / "Multi-GGUF" / "mmproj-multi.gguf")
    _touch(tmp_path / "pub" / "Multi-GGUF" / "multi.gguf.part")
    _touch(tmp_path / "pub" / "Multi-GGUF" / ".multi-Q2_K.gguf.abc.tmp")
    _touch(tmp_path / ".trash" / "x" / "old.gguf")
    _touch(tmp_path / "pub" / "notes.txt")
    # Headers are not read here (these are no GGUFs): every file counts as a text model.
    found = scan(tmp_path, type_of=lambda path: None)
    assert [(m.key, m.path.relative_to(tmp_path).as_posix()) for m in found.models] == [
        ("flat", "pub/flat.gguf"),
        ("multi@q4_k_m", "pub/Multi-GGUF/multi-Q4_K_M.gguf"),
        ("multi@q8_0", "pub/Multi-GGUF/multi-Q8_0.gguf"),
        ("one", "deep/one/a/b/weights.gguf"),
        ("top", "top-Q8_0.gguf"),
        ("two@f16", "deep/two/x/two-F16.gguf"),
        ("two@q8_0", "deep/two/y/z/two-Q8_0.gguf"),
    ]
    multi = found.models[1]
    assert (multi.publisher, multi.name, multi.variant) == ("pub", "multi", "q4_k_m")
    assert found.models[4].publisher == "local"
    assert found.skipped == []


def test_a_key_taken_twice_keeps_the_first_file_and_says_so(tmp_path: Path) -> None:
    _touch(tmp_path / "pub" / "x" / "x.gguf")
    _touch(tmp_path / "pub" / "x" / "sub" / "X.gguf")  # same model, same stem: no variant helps
    found = scan(tmp_path, type_of=lambda path: None)
    # The first found keeps it: a folder's own files come before its subfolders'.
    assert [(m.key, m.path) for m in found.models] == [("x@x", tmp_path / "pub" / "x" / "x.gguf")]
    assert len(found.skipped) == 1
    assert "x@x is already taken" in found.skipped[0]


def test_scan_of_a_missing_folder_is_empty(tmp_path: Path) -> None:
    assert scan(tmp_path / "nope") == modelfolder.FolderScan()


def test_scan_defaults_to_the_models_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LMS_HOME", str(tmp_path))
    _touch(tmp_path / "data" / "models" / "acme" / "tiny" / "tiny.gguf")
    assert [m.key for m in scan().models] == ["tiny"]


def _variety(root: Path, make_gguf: Callable[..., bytes]) -> None:
    """A folder with every layout: several variants, a top-level file, depth one, deeper files,
    plus files the daemon leaves out (not a GGUF, a projector not named mmproj)."""
    make_gguf(root / "top.gguf", tensor_bytes=64)
    make_gguf(root / "pub" / "flat.gguf", tensor_bytes=64, name="Flat")
    make_gguf(root / "pub" / "multi" / "multi-Q4_K_M.gguf", tensor_bytes=64)
    make_gguf(root / "pub" / "multi" / "multi-Q8_0.gguf", tensor_bytes=128)
    make_gguf(root / "deep" / "two" / "x" / "two-F16.gguf", tensor_bytes=64)
    make_gguf(root / "deep" / "two" / "y" / "z" / "two-Q8_0.gguf", tensor_bytes=64)
    make_gguf(root / "deep" / "one" / "a" / "b" / "weights.gguf", tensor_bytes=64)
    _touch(root / "bad" / "zeros" / "zeros.gguf", b"\0" * 64)


def test_daemon_and_cli_give_the_same_keys_and_entries(
    tmp_path: Path,
    make_gguf: Callable[..., bytes],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LMS_HOME", str(tmp_path / "home"))  # completion's type cache
    _variety(tmp_path, make_gguf)
    with caplog.at_level(logging.WARNING, logger="lms.inference.catalog"):
        daemon = catalog.discover(tmp_path)
    assert "zeros.gguf" in caplog.text
    cli = read_entries(tmp_path)
    keys = ["flat", "multi@q4_k_m", "multi@q8_0", "one", "top", "two@f16", "two@q8_0"]
    assert [m.key for m in daemon] == keys
    assert [e["key"] for e in cli] == keys
    # Completion reads no header it has cached: it also offers the file the daemon cannot read.
    assert [m.key for m in scan(tmp_path).models] == sorted([*keys, "zeros"])
    for model, entry in zip(daemon, cli, strict=True):
        assert entry["path"] == str(model.path)
        assert entry["display_name"] == model.display_name
        assert (entry["architecture"], entry["quantization"]) == (
            model.architecture,
            model.quantization,
        )
        assert entry["size_bytes"] == model.size_bytes
    assert cli[0]["display_name"] == "Flat"


def test_variant_keys_no_longer_depend_on_the_header(
    tmp_path: Path, make_gguf: Callable[..., bytes]
) -> None:
    # Both files say F32 in their header: the old rule fell back to stems; names decide now.
    make_gguf(tmp_path / "pub" / "m" / "m-Q4_K_M.gguf", tensor_bytes=64)
    make_gguf(tmp_path / "pub" / "m" / "m-Q8_0.gguf", tensor_bytes=64)
    assert [m.key for m in catalog.discover(tmp_path)] == ["m@q4_k_m", "m@q8_0"]
