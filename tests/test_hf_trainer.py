"""``DeltaTrainer``: Hugging Face ``transformers.Trainer`` training a selection, checkpoints holding only the delta,
resumable to the very same delta, ending in ``save_delta`` (``examples/hf_trainer.py`` as written, on a tiny BERT)."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from selectune.delta import DeltaError, load_delta, read_delta

ROOT = Path(__file__).resolve().parent.parent


def example():
    spec = importlib.util.spec_from_file_location("hf_trainer_example", ROOT / "examples" / "hf_trainer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def uninterrupted(tiny_bert_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    return out, example().main(str(out), model=tiny_bert_dir, max_steps=9, save_steps=3, rows=120)


def test_checkpoints_hold_only_the_delta(uninterrupted, tiny_bert_dir):
    out, delta = uninterrupted
    checkpoints = sorted((out / "trainer").glob("checkpoint-*"))
    assert [c.name for c in checkpoints] == ["checkpoint-3", "checkpoint-6", "checkpoint-9"]
    base_bytes = sum(f.stat().st_size for f in Path(tiny_bert_dir).glob("*.safetensors"))
    for checkpoint in checkpoints:
        names = {p.name for p in checkpoint.iterdir()}
        assert "delta" in names and "trainer_state.json" in names and "optimizer.pt" in names
        assert not names & {"model.safetensors", "pytorch_model.bin", "config.json", "training_args.bin"}, names
        assert (checkpoint / "delta" / "delta.safetensors").stat().st_size < base_bytes / 5
    # the last checkpoint's delta is the one save_delta wrote at the end
    final = load_file(str(Path(delta) / "delta.safetensors"))
    last = load_file(str(checkpoints[-1] / "delta" / "delta.safetensors"))
    assert final.keys() == last.keys() and all(torch.equal(final[k], last[k]) for k in final)
    _, config = read_delta(delta)
    assert config["selection"]["method"] == "bitfit" and config["metadata"]["labels"] == ["negative", "neutral", "positive"]


def test_an_interrupted_run_resumes_to_the_same_delta(uninterrupted, tiny_bert_dir, tmp_path):
    _, straight = uninterrupted
    run = example()
    run.main(str(tmp_path), model=tiny_bert_dir, max_steps=9, save_steps=3, rows=120, stop_after=4)
    state = json.loads((tmp_path / "trainer" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    resumed = run.main(str(tmp_path), model=tiny_bert_dir, max_steps=9, save_steps=3, rows=120, resume=True)
    a, b = load_file(str(Path(straight) / "delta.safetensors")), load_file(str(Path(resumed) / "delta.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name


def test_a_checkpoint_of_another_kind_is_refused(uninterrupted, tiny_bert_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification, TrainingArguments

    import selectune
    from selectune.train.hf_trainer import DeltaTrainer

    out, _ = uninterrupted
    net, info = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=3, output_loading_info=True)
    selection = selectune.select(net, "layernorm", new_parameters=sorted(info["missing_keys"]))
    trainer = DeltaTrainer(model=net, args=TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True),
                           train_dataset=[], selection=selection)
    with pytest.raises(DeltaError, match="another selection"):
        trainer._load_from_checkpoint(str(out / "trainer" / "checkpoint-3"))
    (tmp_path / "checkpoint-1").mkdir()
    with pytest.raises(DeltaError, match="not written by DeltaTrainer"):
        trainer._load_from_checkpoint(str(tmp_path / "checkpoint-1"))
    load_delta(net, out / "delta")  # the finished delta loads onto a fresh copy of its base
