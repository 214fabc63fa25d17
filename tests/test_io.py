"""selectune.io: a staged folder or file appears whole, with the usual mode, or not at all."""
import os

import pytest
from safetensors.torch import load_file, save_file
import torch

from selectune.io import atomic_write_json, replace_folder, staged_file, staged_folder


def _siblings(folder):
    return sorted(p.name for p in folder.iterdir())


def test_staged_folder_renames_the_whole_folder_into_place(tmp_path):
    target = tmp_path / "out" / "run"  # parents are made
    old = os.umask(0o022)
    try:
        with staged_folder(target) as partial:
            assert partial.is_dir() and partial.parent == target.parent and partial.name == f".run.partial-{os.getpid()}"
            assert not target.exists()  # nothing visible until the block ends
            atomic_write_json(partial / "a.json", {"x": 1})
            (partial / "sub").mkdir()
            (partial / "sub" / "b.txt").write_text("b")
    finally:
        os.umask(old)
    assert (target / "a.json").read_text() == '{\n  "x": 1\n}\n' and (target / "sub" / "b.txt").read_text() == "b"
    assert _siblings(target.parent) == ["run"]
    assert oct((target / "a.json").stat().st_mode & 0o777) == "0o644"


def test_staged_folder_leaves_the_target_untouched_on_an_error(tmp_path):
    target = tmp_path / "report"
    target.mkdir()
    (target / "old.md").write_text("old")
    with pytest.raises(ValueError, match="half way"):
        with staged_folder(target) as partial:
            (partial / "new.md").write_text("new")
            raise ValueError("half way")
    assert _siblings(tmp_path) == ["report"] and _siblings(target) == ["old.md"]
    with pytest.raises(KeyboardInterrupt):  # not only Exception: an interrupted run leaves nothing either
        with staged_folder(tmp_path / "fresh") as partial:
            raise KeyboardInterrupt
    assert _siblings(tmp_path) == ["report"]


def test_staged_folder_replaces_an_existing_target_or_keeps_it(tmp_path):
    target = tmp_path / "merged"
    target.mkdir()
    (target / "stale.bin").write_bytes(b"stale")
    with staged_folder(target) as partial:
        (partial / "model.bin").write_bytes(b"new")
    assert _siblings(target) == ["model.bin"]  # replaced whole: nothing of the old folder survives
    with staged_folder(target, keep_existing=True) as partial:  # another process built it meanwhile
        (partial / "model.bin").write_bytes(b"mine")
    assert (target / "model.bin").read_bytes() == b"new" and _siblings(tmp_path) == ["merged"]


def test_staged_folder_clears_a_partial_left_by_a_dead_process_with_our_pid(tmp_path):
    left = tmp_path / f".run.partial-{os.getpid()}"
    left.mkdir()
    (left / "half.json").write_text("{")
    with staged_folder(tmp_path / "run") as partial:
        (partial / "whole.json").write_text("{}")
    assert _siblings(tmp_path) == ["run"] and _siblings(tmp_path / "run") == ["whole.json"]


def test_staged_file_serves_writers_that_take_a_path(tmp_path):
    path = tmp_path / "delta.safetensors"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with staged_file(path) as tmp:
            save_file({"w": torch.ones(2)}, str(tmp))
            raise RuntimeError("crash before the rename")
    assert path.read_bytes() == b"old" and _siblings(tmp_path) == ["delta.safetensors"]
    with staged_file(path) as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".tmp")
        save_file({"w": torch.ones(2)}, str(tmp))
    assert torch.equal(load_file(str(path))["w"], torch.ones(2)) and _siblings(tmp_path) == ["delta.safetensors"]


def test_replace_folder_moves_a_staged_tree(tmp_path):
    staged = tmp_path / "staging" / "abc"
    (staged / "nested").mkdir(parents=True)
    (staged / "nested" / "f").write_text("f")
    replace_folder(staged, tmp_path / "models" / "abc")
    assert (tmp_path / "models" / "abc" / "nested" / "f").read_text() == "f" and not staged.exists()
