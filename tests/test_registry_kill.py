"""A registry writer SIGKILLed at random points, many times over: the registry always opens, every version whose
registration returned is there and loads with its exact tensors, aliases agree with the events, and nothing
points at a missing or partial file."""
import json
import os
import random
import signal
import time

import pytest
import torch

from selectune.delta import read_delta, save_delta
from selectune.models import TASK_FILE, load_with_delta
from selectune.registry import Registry, resolve_version
from selectune.registry.register import register
from selectune.registry.store import RegistryError
from selectune.selection import select
from selectune.train.tabular import TabularMLP, TabularMLPConfig
from selectune.tasks import TabularClassification

POOL = 6  # distinct deltas; version k of model m{k // POOL} is pool delta k % POOL, so every registration is new
KILLS = 40


@pytest.fixture(scope="module")
def deltas(tmp_path_factory):
    """A base model folder and POOL full deltas on it (~1 MB each, so a kill can land inside a file copy)."""
    root = tmp_path_factory.mktemp("kill")
    task = TabularClassification(label_col="y", labels=["0", "1"], feature_cols=["a", "b", "c"])
    torch.manual_seed(0)
    config = TabularMLPConfig(n_features=3, n_outputs=2, hidden=[512, 512], feature_names=["a", "b", "c"], labels=["0", "1"])
    TabularMLP(config).save_pretrained(root / "base")
    (root / "base" / TASK_FILE).write_text(json.dumps(task.metadata()))
    paths = []
    for i in range(POOL):
        net = TabularMLP.from_pretrained(root / "base")
        selection = select(net, "full")
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.01 * (i + 1))
        paths.append(save_delta(net, selection, root / f"delta{i}", metadata={"task": task.metadata(), "base_model": str(root / "base")}))
    return root, paths


def writer(registry, paths, report_fd) -> None:
    """Register, promote and roll back as fast as possible, reporting each registration after it returned."""
    torch.set_num_threads(1)  # a forked child must not start the parent's thread pool
    reg = Registry(registry, create=True)
    step = 0
    while True:
        total = sum(len(reg.versions(n)) for n in reg.names())
        name = f"m{total // POOL}"
        version = register(reg, str(paths[total % POOL]), name)
        os.write(report_fd, f"{version.ref} {total % POOL}\n".encode())
        step += 1
        try:
            if step % 2 == 0:
                reg.promote(version.ref)
            if step % 3 == 0:
                reg.rollback(name)
        except RegistryError:
            pass  # nothing earlier to roll back to


def test_registry_survives_sigkill_at_random_points(deltas, tmp_path):
    root, paths = deltas
    expected = {i: read_delta(p)[0] for i, p in enumerate(paths)}
    registry = tmp_path / "registry"
    rng = random.Random(0)
    committed: dict[str, int] = {}
    killed_during_write = 0
    for iteration in range(KILLS):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the writer
            os.close(read_fd)
            try:
                writer(registry, paths, write_fd)
            finally:
                os._exit(1)
        os.close(write_fd)
        # early iterations die while the registry is being created; later ones anywhere in add/promote/rollback
        time.sleep(rng.uniform(0, 0.01 if iteration < 4 else 0.3))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        with os.fdopen(read_fd) as reports:
            for line in reports.read().splitlines():
                ref, index = line.split()
                committed[ref] = int(index)
        staging = registry / "staging"
        killed_during_write += staging.is_dir() and any(staging.iterdir())
        if not committed and not (registry / "registry.sqlite").exists():
            continue  # killed before the registry existed: nothing was promised
        with Registry(registry) as reg:  # always opens
            assert reg.verify() == [], f"iteration {iteration}"  # every file whole, every alias and parent valid
            present = {v.ref: v for name in reg.names() for v in reg.versions(name)}
            assert set(committed) <= set(present)  # nothing that returned was lost
            for name in reg.names():
                versions = reg.versions(name)
                assert [v.version for v in versions] == list(range(1, len(versions) + 1))
                production = reg.alias(name, "production")
                assert production is None or production in {v.version for v in versions}
            if not present:
                continue  # created, nothing registered yet
            last = max(present.values(), key=lambda v: (int(v.name[1:]), v.version))
        version, delta, base = resolve_version(registry, last.ref)  # the last committed version loads, with its exact tensors
        loaded, _ = read_delta(delta)
        index = last.version - 1  # model m<j> holds pool deltas 0..POOL-1 as versions 1..POOL
        assert all(committed[ref] == int(ref.split("@")[1]) - 1 for ref in committed)
        assert loaded.keys() == expected[index].keys() and all(torch.equal(loaded[k], expected[index][k]) for k in loaded)
        load_with_delta(str(delta), base)
    assert len(committed) >= 10, f"only {len(committed)} registrations in {KILLS} kills: the writer barely ran"
    assert killed_during_write >= 1, "no kill landed while files were being written"
    # the next writer sweeps what dead writers left in staging
    with Registry(registry) as reg:
        with reg.writing():
            pass
    assert not (registry / "staging").exists() or not any((registry / "staging").iterdir())
