"""Compare methods side by side: selective methods against full fine-tuning and PEFT's LoRA, (IA)³ and BEFT,
same data, splits, seeds and epoch budget, then recommend the cheapest one within a tolerance of the best.

    contenders.py      a method string -> a model ready for the loop (selective ``select`` or a PEFT wrapper)
    peft_baselines.py  LoRA, IA3, BEFT from the ``peft`` package, with the head trained as under every method
    cost.py            peak memory beyond the weights around a block of code
    bootstrap.py       percentile bootstrap CIs of seed-mean test metrics
    summary.py         runs -> one row per method (learning rate chosen on validation, mean ± sd over seeds)
    recommend.py       the cheapest method within the tolerance on validation, with subgroup warnings
    plots.py           PNG figures
    render.py          the terminal table
    run.py             the ``selectune compare`` command
"""
from selectune.compare.run import compare

__all__ = ["compare"]
