"""One way to name a trained model: run folder, delta folder, merged folder, registry reference."""
import os
from pathlib import Path

import pytest

from selectune.refs import resolve_trained_model


@pytest.fixture(scope="module")
def named(gated_tabular_runs, tmp_path_factory):
    """The update run of ``gated_tabular_runs`` under every name it can have: run, delta, merged, registry."""
    from selectune.models import merge
    from selectune.registry.commands import add, promote

    runs = gated_tabular_runs
    out = tmp_path_factory.mktemp("refs")
    merged = merge(str(Path(runs["update"]) / "delta"), str(out / "merged"))
    registry = out / "reg"
    add(str(Path(runs["base"]) / "model"), name="bc", registry=str(registry))
    add(runs["update"], name="bc", registry=str(registry), parent=1)
    promote("bc@2", registry=str(registry))
    return {**runs, "merged": merged, "registry": str(registry), "out": out}


def test_run_and_its_delta_folder_name_the_same_files(named):
    run = resolve_trained_model(named["update"])
    delta = resolve_trained_model(str(Path(named["update"]) / "delta"))
    assert (run.form, delta.form) == ("run", "delta")
    assert run.delta == delta.delta == str(Path(named["update"]) / "delta")
    assert run.run_dir == delta.run_dir == Path(named["update"])
    assert run.merged is None and run.base is None
    assert run.task_metadata()["feature_cols"][:2] == ["mean_radius", "mean_texture"]


def test_merged_folder_finds_the_run_it_came_from(named):
    merged = resolve_trained_model(named["merged"])
    assert merged.form == "merged" and merged.delta is None and merged.merged == named["merged"]
    assert merged.run_dir == Path(named["update"]).resolve()
    assert merged.task_metadata() == resolve_trained_model(named["update"]).task_metadata()


def test_registry_reference_by_number_alias_and_folder(named, monkeypatch):
    from selectune.delta import read_delta

    prefixed = resolve_trained_model(f"{named['registry']}/bc@production")
    assert prefixed.form == "registry" and prefixed.registry_ref == "bc@2"
    # The registry's copy of the delta holds the same weights as the run's.
    assert read_delta(prefixed.delta)[1]["weights_sha256"] == read_delta(str(Path(named["update"]) / "delta"))[1]["weights_sha256"]
    # The delta's base as the registry recorded it (an absolute path; a base registered as a version is stored inside).
    assert prefixed.base == str((Path(named["base"]) / "model").resolve())
    assert prefixed.run_dir == Path(named["update"]).resolve()
    # Bare NAME@VERSION is looked up in ./registry.
    os.symlink(named["registry"], named["out"] / "registry")
    monkeypatch.chdir(named["out"])
    first = resolve_trained_model("bc@1")
    assert first.registry_ref == "bc@1" and first.delta != prefixed.delta
    assert resolve_trained_model("bc@latest").delta == prefixed.delta


@pytest.mark.parametrize("given, message", [
    ("no/such/folder", "not found; give a `selectune train --out` folder"),
    ("bc@7", "bc@7 does not exist (versions: 1, 2)"),
    ("nobody@1", "no model named 'nobody'"),
    ("elsewhere/bc@1", "no registry at elsewhere"),
])
def test_bad_names_are_refused_with_the_fix(named, monkeypatch, given, message):
    monkeypatch.chdir(Path(named["registry"]).parent)
    if not Path("registry").exists():
        os.symlink(named["registry"], "registry")
    with pytest.raises(ValueError, match=None) as err:
        resolve_trained_model(given, option="delta")
    assert message in str(err.value)


def test_a_folder_that_holds_no_model_lists_what_it_has(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError) as err:
        resolve_trained_model(str(tmp_path), option="update")
    assert f"--update {tmp_path} is neither a training run" in str(err.value) and "notes.txt" in str(err.value)
