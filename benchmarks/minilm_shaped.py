"""Write a BERT with all-MiniLM-L6-v2's shape and tokenizer but random weights, to time steps where the
real 90 MB weights cannot be taken (the lent GPU machine takes at most 64 MiB of files). Step time and
memory do not depend on the weights' values. Used for benchmarks/results/h200/:

    python benchmarks/minilm_shaped.py OUT_DIR          # here, where the bundled model is installed
    # carry OUT_DIR to the GPU machine, then there:
    python benchmarks/step_time.py --device cuda --model OUT_DIR --rounds 20 --out step_time_h200.json
"""
import shutil
import sys
from pathlib import Path

import torch
from transformers import BertConfig, BertModel

# `python benchmarks/minilm_shaped.py` as the README writes it: this repo's selectune, not another install
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from selectune.models import resolve_model


def main(out: str) -> None:
    source, target = Path(resolve_model("minilm-cls")), Path(out)
    target.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(source / name, target / name)
    torch.manual_seed(0)
    BertModel(BertConfig.from_pretrained(target)).save_pretrained(target)
    print(target)


if __name__ == "__main__":
    main(sys.argv[1])
