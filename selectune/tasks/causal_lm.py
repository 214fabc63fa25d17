"""Causal LM: a decoder LLM (LLaMA, SmolLM2, GPT-2) learns to answer a prompt column with a response column.

Each row is the prompt (put through the tokenizer's chat template when it has one) followed by the response and
the end-of-sequence token; the loss is on the response tokens only. Truncation keeps the whole prompt and cuts the
response's tail, so no row loses its whole response; a row whose prompt alone fills ``--max-length`` is refused.

The responses of this session's task come from a fixed label set (a classification asked as a question, e.g.
"Is this review positive, neutral or negative?" -> "negative"): the model's outputs are then the label probabilities
of constrained scoring (each label's summed token log-likelihood after the prompt, softmaxed over the labels), so
accuracy, macro-F1, AUROC, calibration, bootstrap CIs, subgroups and the gate apply as for any classifier. The held-out
loss (mean NLL per response token) gives the perplexity. ``predict`` also writes a greedy generation per row.
Free-form responses (no label set) and plain language modelling are the sibling task ``text-generation``
(``text_generation.py``, ``--task generation``); the user picks one, and a "label set" of more than ``MAX_LABELS``
responses is refused here with that fix.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from selectune.data import DataError
from selectune.tasks.base import EXAMPLE_REVIEWS, Example, LoadedModel, Task, quiet_transformers, read_model_type, write_example_splits
from selectune.tasks.causal_lm_serving import CausalLMServing
from selectune.tasks.errors import ModelLoadError
from selectune.tasks.outputs import ClassOutputs

MAX_LABELS = 50  # more distinct responses than this are free text (--task generation), not a label set
SAMPLE_PROMPTS, SAMPLE_NEW_TOKENS = 5, 32  # the report's base-vs-update answers: the first 5 test prompts, up to 32 greedy tokens
IGNORE = -100  # cross_entropy's ignore_index: prompt and padding positions carry no loss
# A chat template for tokenizers without one (the conformance example's BERT tokenizer), in the ChatML shape SmolLM2 uses.
EXAMPLE_CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} </{{ m['role'] }}> {% endfor %}"
                         "{% if add_generation_prompt %}<assistant> {% endif %}")


@dataclass
class CausalLM(CausalLMServing, ClassOutputs, Task):
    """Serving (``/v1/predict``, ``/v1/score``, ``/v1/generate``): ``causal_lm_serving.CausalLMServing``."""
    name: ClassVar[str] = "causal-lm"
    hf_task_type: ClassVar[str] = "text-generation"
    label_col: str = "response"
    """The response column (``--response-col``)."""
    labels: list[str] | None = None
    """The responses seen in training, sorted: the label set constrained scoring ranks."""
    prompt_col: str | None = None
    max_length: int = 128
    """Tokens of prompt + response; the prompt is never cut, the response's tail is."""
    tokenizer: Any = field(default=None, repr=False, compare=False)

    # ---- columns and data ---------------------------------------------------------------------
    @property
    def input_columns(self) -> list[str]:
        return [self.prompt_col] if self.prompt_col else []

    def data_options(self) -> dict[str, Any]:
        # The prompt is the text the data checks read; the responses form the label set.
        return {"text_col": self.prompt_col, "feature_cols": None, "task": "classification"}

    def prompt_ids(self, prompts: list[str]) -> list[list[int]]:
        """Token ids of each prompt as the model reads it: through the chat template when the tokenizer has one."""
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
                     for p in prompts]
            return [list(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]
        return [list(ids) for ids in tok(list(prompts))["input_ids"]]

    def response_ids(self, responses: list[str]) -> list[list[int]]:
        """Token ids of each response, ending in the end-of-sequence token (the model learns to stop)."""
        eos = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        return [list(ids) + eos for ids in self.tokenizer(list(responses), add_special_tokens=False)["input_ids"]]

    def _check_prompt_lengths(self, prompts: list[list[int]], rows: pd.Index) -> None:
        too_long = [(row, len(ids)) for row, ids in zip(rows, prompts) if len(ids) >= self.max_length]
        if too_long:
            shown = ", ".join(f"row {row} ({n} tokens)" for row, n in too_long[:5])  # 0-based rows of the frame read
            raise DataError(f"{len(too_long)} prompt(s) fill --max-length {self.max_length} on their own, leaving no room for the "
                            f"response: {shown}. Raise --max-length or shorten those prompts.")

    def encode(self, frame: pd.DataFrame, with_labels: bool = True) -> dict[str, Any]:
        """Per row: ``prompt_ids``, ``response_ids`` (cut to fit ``max_length``; empty without labels) and ``labels``
        (the response's index in the label set)."""
        prompts = self.prompt_ids(frame[self.prompt_col].astype(str).tolist())
        self._check_prompt_lengths(prompts, frame.index)
        out: dict[str, Any] = {"prompt_ids": prompts, "response_ids": [[] for _ in prompts]}
        if with_labels and self.label_col in frame:
            responses = self.response_ids(frame[self.label_col].astype(str).tolist())
            out["response_ids"] = [r[: self.max_length - len(p)] for p, r in zip(prompts, responses)]
            out["labels"] = torch.tensor(self.label_ids(frame))
        return out

    def collate(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Right-padded (B, T) prompt + response ids, their mask and per-token targets (IGNORE outside responses);
        (B, P) prompts alone for constrained scoring and generation; (B,) label indices."""
        pad = self.pad_id
        sequences = [r["prompt_ids"] + r["response_ids"] for r in rows]
        width = max(len(s) for s in sequences)
        batch = {"input_ids": torch.tensor([s + [pad] * (width - len(s)) for s in sequences]),
                 "attention_mask": torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences]),
                 "lm_targets": torch.tensor([[IGNORE] * len(r["prompt_ids"]) + r["response_ids"] + [IGNORE] * (width - len(s))
                                             for r, s in zip(rows, sequences)])}
        prompts = [r["prompt_ids"] for r in rows]
        width = max(len(p) for p in prompts)
        batch["prompt_ids"] = torch.tensor([p + [pad] * (width - len(p)) for p in prompts])
        batch["prompt_lengths"] = torch.tensor([len(p) for p in prompts])
        if "labels" in rows[0]:
            batch["labels"] = torch.stack([torch.as_tensor(r["labels"]) for r in rows])
        return batch

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    # ---- model --------------------------------------------------------------------------------
    def load_model(self, model: str, train_frame: pd.DataFrame | None = None, *, hidden: list[int] | None = None,
                   with_tokenizer: bool = True) -> LoadedModel:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not Path(model).exists() and os.environ.get("HF_HUB_OFFLINE") == "1":
            raise ModelLoadError(f"model {model} is not a local directory and HF_HUB_OFFLINE=1; give a local HF model folder.")
        try:
            with quiet_transformers():
                if with_tokenizer:
                    self.tokenizer = AutoTokenizer.from_pretrained(model)
                net, info = AutoModelForCausalLM.from_pretrained(model, output_loading_info=True)
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"cannot load a causal LM from {model}: {str(err).splitlines()[0]} "
                                 "Give a local Hugging Face decoder model folder (config.json + weights + tokenizer), or `smollm2`.") from None
        names = {n for n, _ in net.named_parameters()}
        new = sorted(n for n in info.get("missing_keys", []) if n in names)
        self.check_label_set()
        return LoadedModel(net, new, self.tokenizer)

    def check_label_set(self) -> None:
        """The responses must be a small label set (each scored per prompt): more than MAX_LABELS distinct ones are free text."""
        if self.labels is not None and len(self.labels) > MAX_LABELS:
            raise DataError(f"the training responses (--response-col {self.label_col}) hold {len(self.labels)} distinct values, more "
                            f"than the {MAX_LABELS} a label set may have (each is scored for every prompt); free-form responses train "
                            "with --task generation (perplexity, greedy answers; no accuracy).")

    def save_model(self, model: nn.Module, out_dir: str | os.PathLike) -> None:
        model.save_pretrained(out_dir)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(out_dir)

    @classmethod
    def claims_model_dir(cls, path: str | os.PathLike) -> bool:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        return Path(path).is_dir() and read_model_type(path) in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    @classmethod
    def load_base(cls, path: str, n_outputs: int = 2, with_tokenizer: bool = True) -> LoadedModel:
        loaded = cls(labels=[str(i) for i in range(n_outputs)]).load_model(path, with_tokenizer=with_tokenizer)
        loaded.model.eval()
        return loaded

    @classmethod
    def method_defaults(cls, method: str) -> dict[str, Any]:
        # A decoder LLM (LLaMA, SmolLM2) has no biases: BitFit inserts zero ones, which merge into plain config flags.
        return {"add_missing_biases": True} if method == "bitfit" else {}

    # ---- loss, outputs, metrics ---------------------------------------------------------------
    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], class_weights: torch.Tensor | None):
        """(mean NLL per response token, (B, C) label log-likelihoods): the scores only in eval mode, where
        ``predict`` reads them; training needs the loss alone. In eval mode each row's response is one of the labels, so
        its NLL is minus its label's score: one forward gives both."""
        if model.training:
            nll, tokens = self.response_nll(model, batch)
            return nll.sum() / tokens.sum().clamp_min(1), nll.new_zeros(len(nll), 0)
        scores = self.forward(model, batch)  # (B, C)
        nll = -scores.gather(1, batch["labels"].unsqueeze(1)).squeeze(1)  # (B,) summed NLL of each row's response tokens
        tokens = (batch["lm_targets"] != IGNORE).sum(1)
        return nll.sum() / tokens.sum().clamp_min(1), scores

    @staticmethod
    def response_nll(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) summed NLL of each row's response tokens and (B,) their number."""
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, T, V)
        targets = batch["lm_targets"][:, 1:]  # token t+1 is predicted at position t
        nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE, reduction="none")  # (B, T-1)
        return nll.sum(1), (targets != IGNORE).sum(1)

    def row_losses(self, model: nn.Module, frame: pd.DataFrame, batch_size: int) -> np.ndarray:
        """(N, 2): each row's summed response NLL and its response tokens (``gate`` bootstraps perplexity from them)."""
        model.eval()
        device = next(model.parameters()).device
        rows, out = self.examples(frame), []
        with torch.no_grad():
            for start in range(0, len(rows), batch_size):
                batch = {k: v.to(device) for k, v in self.collate(rows[start:start + batch_size]).items()}
                nll, tokens = self.response_nll(model, batch)
                out.append(torch.stack([nll.double(), tokens.double()], 1).cpu())
        return torch.cat(out).numpy()

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, C): summed log-likelihood of each label's tokens (end-of-sequence included) after each prompt.

        One forward over the prompts (left-padded, so every row's last position is its last prompt token) fills a KV cache
        that every label continues from: the cost is about one forward per prompt, not one per label. A label's tokens
        past ``max_length`` (a prompt close to it) are not scored, as in training."""
        prompt_ids, mask, positions = self._left_padded(batch)  # (B, P) each
        # logits_to_keep=1: the LM head runs on the last position only ((B, 1, V), not (B, P, V))
        out = model(input_ids=prompt_ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
        first = torch.log_softmax(out.logits[:, -1].float(), -1)  # (B, V): the distribution of the answer's first token
        cache = out.cache
        room = self.max_length - batch["prompt_lengths"].to(prompt_ids.device)  # (B,) answer tokens that fit
        columns = []
        for label_ids in self.response_ids(self.labels):
            label = torch.tensor(label_ids, device=prompt_ids.device)  # (L,)
            token_lp = first[:, label[0]].unsqueeze(1)  # (B, 1)
            if len(label_ids) > 1:
                steps = label[:-1].expand(len(prompt_ids), -1)  # (B, L-1): each fed token predicts the next label token
                step_mask = torch.cat([mask, torch.ones_like(steps)], 1)
                step_positions = positions[:, -1:] + 1 + torch.arange(steps.shape[1], device=steps.device)
                logits = model(input_ids=steps, attention_mask=step_mask, position_ids=step_positions, cache=cache,
                               use_cache=True).logits.float()  # (B, L-1, V)
                cache.crop(-steps.shape[1])  # back to the prompts alone for the next label
                rest = torch.log_softmax(logits, -1).gather(-1, label[1:].expand(len(prompt_ids), -1).unsqueeze(-1)).squeeze(-1)
                token_lp = torch.cat([token_lp, rest], 1)  # (B, L)
            scored = torch.arange(len(label_ids), device=room.device) < room.unsqueeze(1)  # (B, L)
            columns.append((token_lp * scored).sum(1))
        return torch.stack(columns, 1)

    def _left_padded(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The batch's right-padded prompts left-padded: (B, P) ids, attention mask and positions (0 from each row's first token)."""
        lengths = batch["prompt_lengths"]
        width = int(lengths.max())
        ids = torch.full((len(lengths), width), self.pad_id, dtype=batch["prompt_ids"].dtype, device=batch["prompt_ids"].device)
        mask = torch.zeros_like(ids)
        for row, n in enumerate(lengths.tolist()):
            ids[row, width - n:] = batch["prompt_ids"][row, :n]
            mask[row, width - n:] = 1
        return ids, mask, (mask.cumsum(1) - 1).clamp_min(0)

    def outputs(self, model: nn.Module, logits: torch.Tensor) -> np.ndarray:
        """(N, C) label log-likelihoods -> probabilities over the label set."""
        return torch.softmax(logits.float(), dim=-1).cpu().numpy()

    def loss_metrics(self, loss: float) -> dict[str, float]:
        return {"perplexity": float(math.exp(min(loss, 700.0)))} if np.isfinite(loss) else {}

    def class_weights(self, label_ids: torch.Tensor, mode: str | None) -> torch.Tensor | None:
        if mode is not None:
            raise ValueError("--class-weight does not apply to causal-lm (its loss is per response token); drop it")
        return None

    def generation_prompts(self, frame: pd.DataFrame) -> list[list[int]]:
        """Token ids each greedy answer continues: the prompts as the model reads them."""
        return self.prompt_ids(frame[self.prompt_col].astype(str).tolist())

    def generate_columns(self, model: nn.Module, frame: pd.DataFrame, max_new_tokens: int) -> dict[str, Any]:
        """``generated``: the greedy answer to each prompt (one row at a time, so no padding can change it)."""
        model.eval()
        answers = []
        with torch.no_grad():
            for ids in self.generation_prompts(frame):
                device = next(model.parameters()).device
                prompt = torch.tensor([ids], device=device)
                out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=max_new_tokens,
                                     do_sample=False, pad_token_id=self.pad_id, eos_token_id=self.tokenizer.eos_token_id)
                answers.append(self.tokenizer.decode(out[0, len(ids):], skip_special_tokens=True).strip())
        return {"generated": answers}

    def answer_samples(self, model: nn.Module, frame: pd.DataFrame) -> list[dict[str, str]] | None:
        """The first ``SAMPLE_PROMPTS`` rows' prompts and greedy answers (up to ``SAMPLE_NEW_TOKENS`` tokens): the same rows
        for every model, so ``report`` can set base and update side by side."""
        rows = frame.iloc[:SAMPLE_PROMPTS]
        answers = self.generate_columns(model, rows, SAMPLE_NEW_TOKENS)
        prompts = rows[self.input_columns[0]].astype(str).tolist()
        return [{"prompt": p, "answer": a} for p, a in zip(prompts, next(iter(answers.values())))]

    def describe(self) -> dict[str, Any]:
        return {"prompt_col": self.prompt_col, "max_length": self.max_length, "labels": self.labels}

    # ---- metadata and options -----------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        return {"kind": self.name, "label_col": self.label_col, "labels": self.labels, "prompt_col": self.prompt_col,
                "max_length": self.max_length}

    @classmethod
    def from_metadata(cls, data: dict[str, Any]) -> "CausalLM":
        return cls(label_col=data["label_col"], labels=data["labels"], prompt_col=data["prompt_col"], max_length=data["max_length"])

    def options(self) -> dict[str, Any]:
        return {"text_col": None, "feature_cols": [], "task": "classification", "max_length": self.max_length,
                "prompt_col": self.prompt_col, "response_col": self.label_col}

    @classmethod
    def from_options(cls, *, label_col: str, text_col: str | None, feature_cols: list[str], task: str, max_length: int,
                     prompt_col: str | None = None, response_col: str | None = None) -> "CausalLM | None":
        if not prompt_col or task != "classification":  # --task generation: free-form responses (TextGeneration)
            return None
        return cls(label_col=response_col or label_col, prompt_col=prompt_col, max_length=max_length)

    @classmethod
    def write_example(cls, folder: Path, seed: int = 0) -> Example:
        """A 2-layer LLaMA (hidden 32, random, bias-free, tied embeddings like SmolLM2) with the bundled MiniLM
        tokenizer given a chat template, and reviews asked as a question with a one-word answer."""
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

        from selectune.models import resolve_model

        torch.manual_seed(seed)
        tok = AutoTokenizer.from_pretrained(resolve_model("minilm-cls"))
        tok.chat_template, tok.eos_token = EXAMPLE_CHAT_TEMPLATE, tok.sep_token
        config = LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                             intermediate_size=64, max_position_embeddings=128, tie_word_embeddings=True,
                             bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id)
        LlamaForCausalLM(config).save_pretrained(folder / "base")
        tok.save_pretrained(folder / "base")
        good, bad = EXAMPLE_REVIEWS

        def frame(n: int, offset: int) -> pd.DataFrame:
            rows = [(f"Review: {(good if i % 2 == 0 else bad)[(i // 2 + offset) % 4]} (review {i + offset}). Positive or negative?",
                     "positive" if i % 2 == 0 else "negative") for i in range(n)]
            return pd.DataFrame(rows, columns=["question", "answer"])

        paths = write_example_splits(folder, frame)
        test = pd.read_csv(paths["test"])
        return Example(train=paths["train"], validation=paths["validation"], test=paths["test"],
                       train_options={"model": str(folder / "base"), "prompt_col": "question", "response_col": "answer",
                                      "max_length": 48, "batch_size": 8},
                       request_inputs=test["question"].tolist()[:5],
                       criteria="criteria:\n  - {metric: auroc, rule: non_inferior, margin: 1.0}\n"
                                "  - {metric: accuracy, rule: non_inferior, margin: 1.0}\n"
                                "  - {metric: perplexity, rule: max_worsening, value: 0.5}\n")
