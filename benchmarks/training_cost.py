"""Training cost: full fine-tuning vs BitFit vs PEFT LoRA, (IA)³ and BEFT on MiniLM, same batch, one process.

The measurement is benchmarks/step_time.py's (interleaved rounds in one process for step time; one child
process per method for peak memory beyond the loaded weights), run with the PEFT baselines from the `peft`
package added; every figure is also reported as a ratio to full fine-tuning.

    python benchmarks/training_cost.py            # ~4 min on 2 idle CPU cores
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from step_time import main  # noqa: E402

METHODS = "full,bitfit,lora,ia3,beft"
OUT = Path(__file__).resolve().parent / "results" / "training_cost.json"

if __name__ == "__main__":
    main(["--methods", METHODS, "--out", str(OUT), *sys.argv[1:]])
