"""Registry and report under careless or hostile use (issue 13, items 10, 11, 12): --overwrite deletes only what the
command itself wrote, a gate binds to the delta it judged, the registry lock is short and its wait bounded, staged
folders are durable, a failed delta write leaves nothing, and report.md keeps code in its fence."""
import fcntl
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from selectune.cli import main
from selectune.delta import DELTA_CONFIG, DELTA_WEIGHTS, read_delta
from selectune.io import staged_folder
from selectune.registry import Registry, RegistryError
from selectune.registry.commands import add, export
from selectune.registry.store import LOCK
from tests.tiny_models import saved_tabular_delta


@pytest.fixture()
def tabular_registry(tmp_path):
    """A registry holding one BitFit delta of a small MLP (risk@1), and that delta's folder."""
    saved_tabular_delta(tmp_path / "base", tmp_path / "delta")
    add(str(tmp_path / "delta"), name="risk", registry=str(tmp_path / "reg"))
    return tmp_path / "reg", tmp_path / "delta"


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- item 10: --overwrite deletes only a folder the same command wrote ---------------------------------------------
def test_export_overwrite_refuses_a_folder_it_did_not_write(tabular_registry, tmp_path, capsys):
    registry, _ = tabular_registry
    before = _files(registry)
    for target in (registry, tmp_path / "notes"):
        (tmp_path / "notes").mkdir(exist_ok=True)
        (tmp_path / "notes" / "mine.txt").write_text("a person's notes")
        capsys.readouterr()
        assert main(["registry", "export", "risk@1", str(target), "--registry", str(registry), "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert "was not written by `selectune registry export`" in err and "Traceback" not in err, err
    assert _files(registry) == before and (tmp_path / "notes" / "mine.txt").read_text() == "a person's notes"
    with Registry(registry) as reg:
        assert reg.verify() == []
    # Its own output is replaced, and nothing is left beside it.
    out = tmp_path / "exported"
    export("risk@1", str(out), registry=str(registry))
    (out / "stale.txt").write_text("from an earlier export")
    export("risk@1", str(out), registry=str(registry), overwrite=True)
    assert not (out / "stale.txt").exists() and read_delta(out)[1]["weights_sha256"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_report_overwrite_refuses_a_folder_it_did_not_write(gated_tabular_runs, tmp_path, capsys):
    runs = gated_tabular_runs
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "mine.txt").write_text("keep me")
    args = ["report", runs["update"], "--gate", runs["gate"], "--overwrite", "--out"]
    assert main([*args, str(notes)]) == 2
    assert "was not written by `selectune report`" in capsys.readouterr().err
    assert (notes / "mine.txt").read_text() == "keep me"
    out = tmp_path / "report"
    assert main([*args, str(out)]) == 0 and main([*args, str(out)]) == 0  # its own report is replaced
    assert (out / "report.md").is_file()


# ---- item 11: a gate binds to the delta it judged; the lock is short and its wait bounded ----------------------------
def _gate_variant(gate_dir: str, out: Path, edit) -> Path:
    data = json.loads((Path(gate_dir) / "gate.json").read_text())
    edit(data)
    out.write_text(json.dumps(data))
    return out


def test_a_gate_must_name_the_delta_it_judged(gated_tabular_runs, tmp_path):
    runs, registry = gated_tabular_runs, str(tmp_path / "reg")
    add(str(Path(runs["base"]) / "model"), name="bc", registry=registry)
    written_by_hand = tmp_path / "hand.json"
    written_by_hand.write_text(json.dumps({"passed": True}))
    no_delta = _gate_variant(runs["gate"], tmp_path / "no-delta.json", lambda g: g["update"].pop("delta_weights_sha256"))
    other = _gate_variant(runs["gate"], tmp_path / "other.json", lambda g: g["update"].update(delta_weights_sha256="sha256:" + "0" * 64))
    for gate, phrase in [(written_by_hand, "give the gate.json written by `selectune gate --out`"),
                         (no_delta, "names no delta"), (other, "judged another update")]:
        with pytest.raises(RegistryError, match=phrase):
            add(runs["update"], name="bc", registry=registry, gate=str(gate))
    with Registry(registry) as reg:
        assert [v.version for v in reg.versions("bc")] == [1]
    assert add(runs["update"], name="bc", registry=registry, gate=runs["gate"])["gate_passed"] is not None


def test_lock_waits_end_with_a_clear_message_and_checks_run_before_the_lock(tabular_registry, tmp_path):
    registry, delta = tabular_registry
    # A delta that names another base: refused while checking, which must not wait for the lock.
    wrong = tmp_path / "wrong-base"
    shutil.copytree(delta, wrong)
    config = json.loads((wrong / DELTA_CONFIG).read_text())
    config["selection"]["base_fingerprint"] = "sha256:" + "1" * 64
    (wrong / DELTA_CONFIG).write_text(json.dumps(config))
    outcome = {}

    def register_wrong():
        try:
            add(str(wrong), name="other", registry=str(registry))
        except Exception as err:  # noqa: BLE001 - the test reads which error it was
            outcome["error"] = err

    with open(registry / LOCK, "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another writer holds the registry
        try:
            start = time.monotonic()
            with pytest.raises(RegistryError, match="another writer holds the registry"):
                with Registry(registry, lock_timeout=0.5) as reg:
                    reg.promote("risk@1")
            assert 0.4 < time.monotonic() - start < 5
            worker = threading.Thread(target=register_wrong, daemon=True)
            worker.start()
            worker.join(20)
            assert not worker.is_alive(), "registering waited for the lock before checking the delta"
        finally:
            fcntl.flock(held, fcntl.LOCK_UN)
    assert "fingerprint" in str(outcome.get("error")), outcome


# ---- item 12: durable staged folders, a failed delta write leaves nothing, fences in report.md ----------------------
def test_every_nested_file_and_folder_of_a_staged_folder_is_fsynced(tmp_path, monkeypatch):
    synced = set()
    real_fsync = os.fsync

    def recording_fsync(fd):  # the real fsync, noting which file it flushed
        stat = os.fstat(fd)
        synced.add((stat.st_dev, stat.st_ino))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    target = tmp_path / "model"
    with staged_folder(target) as partial:
        (partial / "a" / "b").mkdir(parents=True)
        (partial / "top.json").write_text("{}")
        (partial / "a" / "mid.bin").write_bytes(b"1" * 10)
        (partial / "a" / "b" / "deep.safetensors").write_bytes(b"2" * 10)
    everything = [target, *target.rglob("*")]
    assert len(everything) == 6
    missed = [str(p) for p in everything if (p.stat().st_dev, p.stat().st_ino) not in synced]
    assert missed == [] and (tmp_path.stat().st_dev, tmp_path.stat().st_ino) in synced


SAVE_UNDER_A_SIZE_LIMIT = """
import resource, signal, sys, torch
from selectune import save_delta, select
from selectune.tasks import TabularClassification
from selectune.train.tabular import TabularMLP, TabularMLPConfig

net = TabularMLP(TabularMLPConfig(n_features=2, n_outputs=2, hidden=[512, 512], dropout=0.0, feature_names=["a", "b"], labels=["n", "y"]))
selection = select(net, "full")
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as a full disk fails with ENOSPC
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
try:
    save_delta(net, selection, sys.argv[1], metadata={"task": TabularClassification(label_col="o", labels=["n", "y"], feature_cols=["a", "b"]).metadata()})
except OSError as err:
    print("refused:", type(err).__name__, err)
else:
    print("saved")
"""


def test_a_delta_write_that_fails_on_disk_leaves_nothing_behind(tmp_path):
    out = tmp_path / "delta"
    result = subprocess.run([sys.executable, "-c", SAVE_UNDER_A_SIZE_LIMIT, str(out)], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert result.stdout.startswith("refused: OSError") and "File too large" in result.stdout, result.stdout + result.stderr
    assert not out.exists() or sorted(os.listdir(out)) == []


def test_two_writers_of_one_delta_folder_do_not_collide(tabular_registry, tmp_path):
    from selectune import save_delta, select
    from selectune.train.tabular import TabularMLP

    _, delta = tabular_registry
    metadata = json.loads((delta / DELTA_CONFIG).read_text())["metadata"]
    net = TabularMLP.from_pretrained(metadata["base_model"])
    selection = select(net, "full")
    errors = []

    def write():
        try:
            for _ in range(5):
                save_delta(net, selection, tmp_path / "shared", metadata=metadata)
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    workers = [threading.Thread(target=write) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert errors == [] and sorted(os.listdir(tmp_path / "shared")) == sorted([DELTA_WEIGHTS, DELTA_CONFIG])
    assert read_delta(tmp_path / "shared")[1]["selection"]["method"] == "full"


def test_code_with_backtick_fences_stays_code_in_report_md():
    from selectune.report.document import Code, Section, to_markdown

    hostile = "criteria:\n  - {metric: auroc}\n```\n<script>alert(1)</script>\n````\n<img src=x onerror=alert(2)>\n~~~"
    markdown = to_markdown("t", "s", [Section("Gate", [Code(hostile)])])
    tokens = MarkdownIt("commonmark").parse(markdown)
    fences = [t for t in tokens if t.type == "fence"]
    assert len(fences) == 1 and fences[0].content.rstrip("\n") == hostile
    assert not [t for t in tokens if t.type == "html_block"] and "alert" not in "".join(
        t.content for t in tokens if t.type == "inline")
