"""Mixed-batch generation on SmolLM2-135M-Instruct (CPU): greedy tokens/s for N prompts over 16 BitFit deltas
(inserted biases) in one mixed batch, vs the merged model alone on the same prompts, vs PEFT LoRA r=8 with 16
adapters in PEFT's own mixed batch (``generate(adapter_names=...)``), timed interleaved in one process.

Every configuration decodes the same left-padded batch of drug-review prompts (through the chat template) for exactly
``--new-tokens`` tokens (no early stop, so all generate as many): ``mixed`` and ``merged`` with the server's decoder
(``selectune/serve/generation.py``: one forward per step, KV cache), the merged model also with Hugging Face
``generate`` (the loop PEFT runs in), and LoRA with ``generate``. Rounds are interleaved so drift in machine load hits
every configuration alike; the median over rounds is reported, and ratios are to ``merged``. The mixed answers of the
rows on delta 0 are checked against the merged model (which is delta 0 merged): identical tokens.

Deltas are random-valued biases (and LoRA adapters random B): speed does not depend on training.

    python benchmarks/causal_lm_serve.py             # ~4-5 min on 2 idle CPU cores (sized from a 2-token run)
    python benchmarks/causal_lm_serve.py --quick --busy-ok "smoke run" --out /tmp/causal_lm_serve.json   # tiny LLaMA
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch

# `python benchmarks/causal_lm_serve.py` as the README writes it: the repo root (selectune, benchmarks) is importable
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.machine_load import add_load_flags, check_machine, finished
from benchmarks.serve_throughput import with_lora_adapters
from selectune import save_delta, select
from selectune.data import export_bundled
from selectune.delta import load_delta, read_delta
from selectune.io import atomic_write_json
from selectune.models import resolve_model
from selectune.serve.generation import greedy_decode
from selectune.serve.mixed_model import MixedBiasModel, MixedDelta
from selectune.serve.paths import BoundModel
from selectune.tasks import CausalLM
from selectune.train.run import environment

LABELS = ["negative", "neutral", "positive"]
QUESTION = "Review: {review}\nIs this review positive, neutral or negative? Answer with one word."
SYNTHETIC = ("deltas are random-valued biases (BitFit with inserted biases, normal noise of std {scale}) and the LoRA "
             "adapters have random A and B (init_lora_weights=False): generation speed does not depend on training")


def make_causal_deltas(base: str, outs: list[str | Path], *, seed: int, scale: float = 0.05, method: str = "bitfit",
                       max_length: int = 256, **options) -> list[Path]:
    """Deltas of ``method`` (BitFit with inserted biases by default) on the causal LM at ``base``: what it trains moved
    by normal noise (seed + i), with task metadata as `selectune train` writes it (label set ``LABELS``)."""
    task = CausalLM(label_col="answer", labels=LABELS, prompt_col="question", max_length=max_length)
    loaded = task.load_model(base)
    selection = select(loaded.model, method, new_parameters=loaded.new_parameters, **{**task.method_defaults(method), **options})
    trainable = [p for p in loaded.model.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in trainable]  # inserted biases start at zero
    written = []
    for i, out in enumerate(outs):
        generator = torch.Generator().manual_seed(seed + i)
        with torch.no_grad():
            for param, first in zip(trainable, start):
                param.copy_(first + torch.randn(param.shape, generator=generator, dtype=param.dtype) * scale)
        written.append(save_delta(loaded.model, selection, out, metadata={"task": task.metadata(), "base_model": base}))
    return written


def review_prompts(tokenizer, n: int, max_review_tokens: int) -> list[list[int]]:
    """Token ids of ``n`` drug-review questions through the chat template (each review cut to ``max_review_tokens``)."""
    with tempfile.TemporaryDirectory() as tmp:
        reviews = pd.read_csv(export_bundled("drug-reviews", tmp)["test"])["review"].astype(str).tolist()
    task = CausalLM(labels=LABELS, prompt_col="question")
    task.tokenizer = tokenizer
    short = [tokenizer.decode(tokenizer(r, add_special_tokens=False)["input_ids"][:max_review_tokens]) for r in reviews[:n]]
    return task.prompt_ids([QUESTION.format(review=r) for r in short])


def lora_model(base: str, n_adapters: int, r: int):
    """PEFT LoRA (q_proj + v_proj, PEFT's default for LLaMA) with ``n_adapters`` random adapters on a fresh base."""
    return with_lora_adapters(CausalLM.load_base(base, with_tokenizer=False).model, "CAUSAL_LM", ["q_proj", "v_proj"], n_adapters, r)


def hf_generate(model, prompts: list[list[int]], new_tokens: int, pad_id: int, **extra) -> list[list[int]]:
    """Hugging Face ``generate`` on the left-padded batch, exactly ``new_tokens`` greedy tokens per row."""
    from selectune.serve.generation import left_padded

    ids, mask = left_padded(prompts, pad_id)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             do_sample=False, pad_token_id=pad_id, **extra)
    return out[:, ids.shape[1]:].tolist()


def our_generate(bound: BoundModel, prompts: list[list[int]], new_tokens: int, pad_id: int) -> list[list[int]]:
    """The server's decoder on ``bound``: exactly ``new_tokens`` per row (no stop token)."""
    return [g.token_ids for g in greedy_decode(bound, prompts, [new_tokens] * len(prompts), [()] * len(prompts), pad_id)]


def time_rounds(runs: dict[str, Callable[[], Any]], rounds: int) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """(seconds of each run per round, the runs interleaved within every round; what each returned in its untimed
    warm-up run)."""
    outputs = {name: run() for name, run in runs.items()}
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    return seconds, outputs


def build_runs(base: str, delta_paths: list[Path], prompts: list[list[int]], new_tokens: int, pad_id: int,
               lora_rank: int) -> dict[str, Callable[[], Any]]:
    """Name -> one generation of all prompts (the tokens of each), the configuration that run times."""
    deltas = [MixedDelta(str(i), read_delta(p)[0]) for i, p in enumerate(delta_paths)]
    mixed = MixedBiasModel(CausalLM.load_base(base, with_tokenizer=False).model)
    mixed.set_deltas(deltas)
    rows = torch.arange(len(prompts)) % len(deltas)  # (N,) prompt i asks delta i mod D

    def run_mixed():
        with mixed.using(rows) as model:
            return our_generate(BoundModel(model, mixed.keep), prompts, new_tokens, pad_id)

    merged = CausalLM.load_base(base, with_tokenizer=False).model
    load_delta(merged, delta_paths[0])  # delta 0's biases inserted into a plain model: the merged model

    def run_merged():
        with torch.inference_mode():
            return our_generate(BoundModel(merged, lambda index: None), prompts, new_tokens, pad_id)

    lora = lora_model(base, len(deltas), lora_rank)
    adapters = [f"a{i % len(deltas)}" for i in range(len(prompts))]
    runs = {"mixed": run_mixed, "merged": run_merged,
            "merged_hf_generate": lambda: hf_generate(merged, prompts, new_tokens, pad_id),
            "lora_mixed": lambda: hf_generate(lora, prompts, new_tokens, pad_id, adapter_names=adapters)}
    return runs


def measure(base: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    delta_paths = make_causal_deltas(base, [workdir / f"d{i}" for i in range(args.deltas)], seed=0, scale=args.scale)
    tokenizer = CausalLM.load_base(base).processor
    prompts = review_prompts(tokenizer, args.prompts, args.max_review_tokens)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    runs = build_runs(base, delta_paths, prompts, args.new_tokens, pad_id, args.lora_rank)
    seconds, outputs = time_rounds(runs, args.rounds)
    # The rows on delta 0 (every args.deltas-th prompt) against the merged model, which is delta 0 merged.
    tokens_match = all(outputs["mixed"][i] == outputs["merged"][i] for i in range(0, len(prompts), args.deltas))
    generated = args.prompts * args.new_tokens
    median = {name: statistics.median(s) for name, s in seconds.items()}
    return {
        "configurations": {name: {"seconds": s, "median_seconds": median[name], "tokens_per_s": generated / median[name],
                                  "ratio_vs_merged": median["merged"] / median[name]} for name, s in seconds.items()},
        "mixed_delta0_tokens_equal_merged": tokens_match,
        "prompt_tokens": {"min": min(map(len, prompts)), "max": max(map(len, prompts))},
        "goals": {"mixed >= 0.9x merged tokens/s": median["merged"] / median["mixed"] >= 0.9,
                  "mixed above PEFT LoRA's mixed batch": median["mixed"] < median["lora_mixed"]},
    }


def tiny_base(folder: Path) -> str:
    """The causal-lm task's tiny random LLaMA (``CausalLM.write_example``): for ``--quick``."""
    CausalLM.write_example(folder)
    return str(folder / "base")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help="base causal LM: smollm2 or a local HF folder")
    parser.add_argument("--prompts", type=int, default=16, help="prompts in the batch")
    parser.add_argument("--new-tokens", type=int, default=32, help="greedy tokens generated per prompt")
    parser.add_argument("--deltas", type=int, default=16, help="BitFit deltas (and LoRA adapters) the prompts cycle over")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (median reported)")
    parser.add_argument("--max-review-tokens", type=int, default=32, help="each review cut to this many tokens")
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--scale", type=float, default=0.05, help="std of the random bias values")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="tiny random LLaMA, 4 prompts, 4 tokens, 4 deltas, 1 round: a smoke test")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "causal_lm_serve.json"))
    add_load_flags(parser)
    args = parser.parse_args(argv)
    load = check_machine(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.prompts, args.new_tokens, args.deltas, args.rounds, args.max_review_tokens = 4, 4, 4, 1, 16
    with tempfile.TemporaryDirectory() as tmp:
        base = tiny_base(Path(tmp) / "tiny") if args.quick else str(resolve_model(args.model))
        result = measure(base, args, Path(tmp))
    config = {k: v for k, v in vars(args).items() if k not in ("out",)}
    out = {"benchmark": "causal_lm_serve", "config": config, "model": "tiny random LLaMA" if args.quick else args.model,
           "synthetic": SYNTHETIC.format(scale=args.scale), **result, "torch_threads": torch.get_num_threads(),
           "environment": environment(), "machine_load": finished(load)}
    atomic_write_json(args.out, out)
    print(json.dumps({name: round(c["tokens_per_s"], 1) for name, c in out["configurations"].items()}))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
