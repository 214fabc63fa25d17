"""benchmarks/drug_reviews.py picks each method's setting on validation only, averaged over the method's seeds."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))  # the benchmarks import their siblings

from drug_reviews import choose  # noqa: E402


def run(lr, dropout, seed, val, test):
    return {"method": "bitfit", "lr": lr, "dropout": dropout, "seed": seed, "val_macro_f1": val, "test": {"macro_f1": test, "accuracy": test},
            "trainable_percent": 0.11, "delta_bytes": 100}


def test_the_setting_with_the_best_mean_validation_over_seeds_is_chosen_never_test():
    grid = {"lr": [1e-3, 3e-3], "dropout": [None, 0.0], "seeds": [0, 1]}
    runs = [run(1e-3, None, 0, 0.50, 0.30), run(1e-3, None, 1, 0.30, 0.30),   # best seed 0 alone, mean 0.40
            run(1e-3, 0.0, 0, 0.45, 0.35), run(1e-3, 0.0, 1, 0.43, 0.37),     # mean 0.44: chosen
            run(3e-3, None, 0, 0.20, 0.90), run(3e-3, None, 1, 0.20, 0.90),   # best on test, worst on validation
            run(3e-3, 0.0, 0, 0.41, 0.40), run(3e-3, 0.0, 1, 0.41, 0.40),
            run(1e-2, None, 0, 0.99, 0.99)]                                   # outside the grid: not a candidate
    chosen = choose("bitfit", grid, runs)
    assert (chosen["lr"], chosen["dropout"]) == (1e-3, 0.0)
    assert chosen["test_macro_f1_by_seed"] == [0.35, 0.37] and abs(chosen["test_macro_f1_mean"] - 0.36) < 1e-12
    assert chosen["test_macro_f1"] == 0.35 and chosen["val_macro_f1"] == 0.45  # the single-run columns: the first seed
    assert abs(chosen["settings"]["lr=0.001 dropout=model"] - 0.40) < 1e-12


def test_no_choice_while_a_setting_lacks_a_seed():
    grid = {"lr": [1e-3], "dropout": [None, 0.0], "seeds": [0, 1]}
    runs = [run(1e-3, None, 0, 0.5, 0.3), run(1e-3, None, 1, 0.5, 0.3), run(1e-3, 0.0, 0, 0.6, 0.3)]
    assert choose("bitfit", grid, runs) is None
