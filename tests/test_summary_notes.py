"""`selectune summary` (the main job's printout): the epoch budget of every row, and a line when BitFit is not the best."""
import json
from pathlib import Path

from selectune.cli import flagship_notes, render_summary
from selectune.compare.recommend import reference_recommendation

ROOT = Path(__file__).resolve().parent.parent


def row(model, f1, epochs, source="runs/x"):
    return {"model": model, "source": source, "macro_f1": f1, "accuracy": 0.5, "epochs": epochs}


def test_a_line_only_when_bitfit_is_not_the_best_row():
    rows = [{"model": "majority class", "source": "train labels", "macro_f1": 0.9}, row("bitfit", 0.45, 8), row("head", 0.40, 3)]
    assert flagship_notes(rows, None) == []  # the majority row is a floor, not a contender
    rows.append(row("full", 0.47, 8, "drug_reviews.json"))
    notes = flagship_notes(rows, None)
    assert notes == ["BitFit is not the best here: full (drug_reviews.json, 8 epochs) has test macro_f1 0.470, BitFit 0.450 "
                     "(runs/x, 8 epochs)."]
    printed = render_summary({"rows": rows, "notes": notes})
    header, *rest = printed.splitlines()
    assert header.split()[4] == "epochs" and rest[-2:] == ["", notes[0]]
    assert "\n\n" not in render_summary({"rows": rows, "notes": []})
    # Regression: lower RMSE is better.
    errors = [{"model": "bitfit", "source": "a", "rmse": 50.0, "epochs": 5}, {"model": "lora", "source": "b", "rmse": 49.0, "epochs": 5}]
    assert flagship_notes(errors, None)[0].startswith("BitFit is not the best here: lora (b, 5 epochs) has test rmse 49.000")
    assert flagship_notes(errors[:1], None) == []


def test_reference_recommendation_reads_the_benchmark_rows():
    reference = json.loads((ROOT / "benchmarks" / "results" / "drug_reviews.json").read_text())
    advice = reference_recommendation(reference)
    chosen = reference["chosen"]
    best = max(chosen, key=lambda m: chosen[m]["val_macro_f1_mean"])
    assert advice["best"] == best
    within = [m for m in chosen if chosen[m]["val_macro_f1_mean"] >= chosen[best]["val_macro_f1_mean"] - 0.01 - 1e-12]
    assert advice["recommended"] == min(within, key=lambda m: chosen[m]["trainable_percent"])
    assert reference_recommendation({"chosen": {}}) is None
    assert reference_recommendation({"chosen": {"bitfit": {"trainable_percent": 0.1}}}) is None
