"""How ``selectune serve`` answers for a causal LM (mixed into ``CausalLM``): what a request may hold and how it is
encoded, the batch of label scores ``/v1/predict`` and ``/v1/score`` compute, and the text ``/v1/generate`` returns.

* ``/v1/predict`` {inputs: [prompt, ...]} and ``/v1/score`` {prompt or messages, labels?}: constrained scoring, as
  offline (``CausalLM.forward``): each label's tokens (end-of-sequence included) after the prompt, their summed
  log-likelihood, softmaxed over the labels. ``/v1/score`` may name its own labels; by default the delta's.
* ``/v1/generate`` {prompt or messages, max_new_tokens}: the prompt's token ids, its stop token and its budget; the
  server decodes greedily (``selectune/serve/generation.py``) and ``decode_generation`` turns the ids into text.

A prompt is a text (put through the chat template as a user turn, as in training) or chat ``messages``
([{role, content}, ...], through the template as they are).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn as nn

from selectune.tasks.base import is_causal_lm_dir
from selectune.tasks.errors import InputError, InputLimits, check_text

IGNORE = -100  # as in causal_lm: positions that carry no score
ROLES = ("system", "user", "assistant")


class CausalLMServing:
    """Serving hooks of ``CausalLM``; it brings ``prompt_ids``, ``response_ids``, ``pad_id``, ``tokenizer``, ``labels``
    and ``max_length``. ``limited_to`` (called by the server at load) hands it the base's tokenizer."""

    max_positions: int | None = None
    """The base's position limit (set by ``limited_to``): a prompt and its new tokens must fit in it."""

    # ---- /v1/predict --------------------------------------------------------------------------
    def encode_request(self, inputs: list[Any], limits: InputLimits, processor: Any) -> list[dict[str, Any]]:
        """Prompts (texts) -> one example each: its prompt ids and the ids of every label of the delta."""
        for i, prompt in enumerate(inputs):
            check_text(prompt, f"inputs[{i}]", limits, use="answer")
        return [self._scoring_example(ids, self.labels, f"inputs[{i}]")
                for i, ids in enumerate(self.prompt_ids([str(p) for p in inputs]))]

    def _scoring_example(self, prompt_ids: list[int], labels: list[str], field: str) -> dict[str, Any]:
        if len(prompt_ids) >= self.max_length:
            raise InputError(f"{field} has {len(prompt_ids)} tokens after the chat template; this model reads at most "
                             f"{self.max_length - 1} before the answer (its --max-length {self.max_length}). Shorten the prompt.", 413)
        room = self.max_length - len(prompt_ids)  # as offline: each label's tail is cut to fit max_length
        return {"prompt_ids": prompt_ids, "candidates": [ids[:room] for ids in self.response_ids(labels)],
                "pad_id": self.pad_id}

    @classmethod
    def collate_request(cls, examples: list[dict[str, Any]], processor: Any) -> dict[str, torch.Tensor]:
        """(B, P) right-padded prompts and their lengths, (B, C, L) right-padded label ids per example and their
        lengths (B, C) (0 where an example has fewer labels than the widest), the pad id."""
        pad = examples[0]["pad_id"]
        width = max(len(e["prompt_ids"]) for e in examples)
        n_labels = max(len(e["candidates"]) for e in examples)
        longest = max(len(c) for e in examples for c in e["candidates"])
        candidates = torch.full((len(examples), n_labels, longest), pad, dtype=torch.long)
        lengths = torch.zeros(len(examples), n_labels, dtype=torch.long)
        for i, example in enumerate(examples):
            for j, ids in enumerate(example["candidates"]):
                candidates[i, j, : len(ids)], lengths[i, j] = torch.tensor(ids, dtype=torch.long), len(ids)
        return {"prompt_ids": torch.tensor([e["prompt_ids"] + [pad] * (width - len(e["prompt_ids"])) for e in examples]),
                "prompt_lengths": torch.tensor([len(e["prompt_ids"]) for e in examples]),
                "candidate_ids": candidates, "candidate_lengths": lengths, "pad_id": torch.tensor(pad)}

    @classmethod
    def forward_request(cls, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, C) summed log-likelihood of each example's labels after its prompt (-inf past its own labels): one
        forward per label slot over the whole batch, right-padded as ``CausalLM.forward`` pads offline."""
        pad = int(batch["pad_id"])
        prompts = [row[:n].tolist() for row, n in zip(batch["prompt_ids"], batch["prompt_lengths"])]
        columns = []
        for j in range(batch["candidate_ids"].shape[1]):
            lengths = batch["candidate_lengths"][:, j]
            answers = [row[j, :n].tolist() for row, n in zip(batch["candidate_ids"], lengths)]
            sequences = [p + a for p, a in zip(prompts, answers)]
            width = max(len(s) for s in sequences)
            ids = torch.tensor([s + [pad] * (width - len(s)) for s in sequences])
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences])
            targets = torch.tensor([[IGNORE] * len(p) + a + [IGNORE] * (width - len(s))
                                    for p, a, s in zip(prompts, answers, sequences)])[:, 1:]  # token t+1 is read at t
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()  # (B, T-1, V)
            token_lp = torch.log_softmax(logits, -1).gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
            score = (token_lp * (targets != IGNORE)).sum(1)
            columns.append(score.masked_fill(lengths == 0, float("-inf")))
        return torch.stack(columns, 1)

    # ---- /v1/score ----------------------------------------------------------------------------
    def encode_scoring(self, prompt: Any, messages: Any, labels: Any, limits: InputLimits) -> tuple[Any, dict[str, Any]]:
        """(this task over the labels asked for (the delta's when None), the example to score)."""
        if labels is not None:
            if (not isinstance(labels, list) or len(labels) < 2 or len(labels) > limits.max_items
                    or not all(isinstance(x, str) and x.strip() for x in labels) or len(set(labels)) != len(labels)):
                raise InputError(f"labels must be a list of 2 to {limits.max_items} distinct non-empty strings (or left out: "
                                 f"the model's own labels {self.labels}).")
            for i, label in enumerate(labels):
                check_text(label, f"labels[{i}]", limits)
        task = self if labels is None else dataclasses.replace(self, labels=list(labels))
        task.max_positions = self.max_positions
        return task, task._scoring_example(self._prompt(prompt, messages, limits), task.labels, "prompt")

    # ---- /v1/generate -------------------------------------------------------------------------
    def encode_generation(self, prompt: Any, messages: Any, max_new_tokens: Any, limits: InputLimits) -> dict[str, Any]:
        """The example ``generation.greedy_decode`` runs: prompt ids, budget, stop and pad ids."""
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= limits.max_new_tokens:
            raise InputError(f"max_new_tokens must be a whole number from 1 to {limits.max_new_tokens} (this server's "
                             f"limit); got {max_new_tokens!r}.")
        ids = self._prompt(prompt, messages, limits)
        if self.max_positions is not None and len(ids) + max_new_tokens > self.max_positions:
            raise InputError(f"the prompt has {len(ids)} tokens and max_new_tokens is {max_new_tokens}: more than the "
                             f"{self.max_positions} positions this model has. Shorten the prompt or ask for fewer tokens.", 413)
        stop = self.tokenizer.eos_token_id
        return {"prompt_ids": ids, "max_new_tokens": max_new_tokens, "stop_ids": [] if stop is None else [stop],
                "pad_id": self.pad_id}

    def decode_generation(self, token_ids: list[int]) -> str:
        """Generated ids -> text, as ``predict`` writes its ``generated`` column."""
        return self.tokenizer.decode(token_ids, skip_special_tokens=True).strip()

    # ---- shared -------------------------------------------------------------------------------
    def _prompt(self, prompt: Any, messages: Any, limits: InputLimits) -> list[int]:
        """Token ids of a request's ``prompt`` (a text: one user turn) or ``messages`` (exactly one of them)."""
        if (prompt is None) == (messages is None):
            raise InputError('send exactly one of "prompt" (a text) or "messages" ([{"role": "user", "content": "..."}]).')
        if prompt is not None:
            check_text(prompt, "prompt", limits, use="answer")
            return self.prompt_ids([prompt])[0]
        if not isinstance(messages, list) or not messages:
            raise InputError('messages must be a non-empty list like [{"role": "user", "content": "..."}].')
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or set(message) != {"role", "content"} or message["role"] not in ROLES:
                raise InputError(f'messages[{i}] must be {{"role": one of {list(ROLES)}, "content": a text}}.')
            check_text(message["content"], f"messages[{i}].content", limits, use="answer")
        if not getattr(self.tokenizer, "chat_template", None):
            raise InputError('this model\'s tokenizer has no chat template, so it cannot read messages; send "prompt" (a text).')
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @classmethod
    def prefers_model_dir(cls, path: Any) -> bool:
        """A folder saved as a causal LM (``architectures`` in its config.json: ``LlamaForCausalLM``, ``GPT2LMHeadModel``,
        ...): `selectune serve` serves causal-lm deltas on it, though a sequence classifier could be built on it too.
        The same test that keeps text classification from claiming such a folder (``base.is_causal_lm_dir``)."""
        return is_causal_lm_dir(path)

    def limited_to(self, model: nn.Module, processor: Any) -> Any:
        """This task with the base's tokenizer (it encodes requests) and position limit (``max_length`` clamped to it)."""
        positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        positions = positions if isinstance(positions, int) and positions > 0 else None
        task = dataclasses.replace(self, tokenizer=processor, max_length=min(self.max_length, positions or self.max_length))
        task.max_positions = positions
        return task

