"""`selectune summary` (the main job's printout): the epoch budget of every row, and a line when BitFit is not the best."""
import json
import re
from pathlib import Path

import pytest

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
    assert header.split()[:5] == ["model", "accuracy", "macro_f1", "epochs", "source"] and rest[-2:] == ["", notes[0]]  # no empty columns
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


def test_recipe_reference_rows_are_seed_means_with_cis_judged_among_themselves():
    from selectune.compare.reference import read_reference

    path = ROOT / "benchmarks" / "results" / "recipe.json"
    recipe = json.loads(path.read_text())
    methods = recipe["tasks"]["rating"]["methods"]
    ref = read_reference(str(path), default_task="rating")  # the runs' label column names the task
    assert [r["model"] for r in ref.rows] == list(methods) and ref.seed_means
    bitfit = next(r for r in ref.rows if r["model"] == "bitfit")
    f1 = methods["bitfit"]["test"]["macro_f1"]
    assert bitfit["macro_f1"] == f1["mean"] and bitfit["95% CI"] == f"[{f1['ci_low']:.3f}, {f1['ci_high']:.3f}]"
    assert (bitfit["epochs"], bitfit["lr"], bitfit["dropout"]) == (8, "0.003", "0") and bitfit["source"] == "recipe.json rating: 5-seed mean"
    # compare's rule on the cross-validated means, never the test rows
    cv = {m: r["cv"]["mean"] for m, r in methods.items()}
    best = max(cv, key=cv.get)
    within = [m for m in cv if cv[m] >= cv[best] - 0.01 - 1e-12]
    assert ref.recommendation["best"] == best
    assert ref.recommendation["recommended"] == min(within, key=lambda m: methods[m]["trainable_parameters"])
    assert ref.recommendation["split"] == "3-fold cross-validation of the training rows"
    # one seed of BitFit (0.516) is not set against full's five-seed mean: the means are compared, with the paired CI
    run = {"model": "bitfit", "source": "runs/b", "macro_f1": 0.9, "epochs": 8}
    notes = flagship_notes([run, *ref.rows], ref.recommendation, ref, [])
    top = max(ref.rows, key=lambda r: r["macro_f1"])
    d = recipe["tasks"]["rating"]["bitfit_minus"][top["model"]]["macro_f1"]
    assert notes[0].startswith(f"BitFit is not the best here: {top['model']} (recipe.json rating: 5-seed mean, {top['epochs']} epochs)")
    assert f"BitFit − {top['model']} {100 * d['value']:+.1f} pt, 95% CI [{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}]" in notes[0]
    assert notes[1].startswith("selectune compare on the reference rows (3-fold cross-validation of the training rows, tolerance 1.0 pt) "
                               f"would recommend {ref.recommendation['recommended']}")
    with pytest.raises(ValueError, match=r"has no task 'drug' \(its tasks: condition, rating\); name one with --reference-task"):
        read_reference(str(path), "drug")
    with pytest.raises(ValueError, match="has no task None"):
        read_reference(str(path))  # no runs to take a label column from
    with pytest.raises(ValueError, match="holds one task"):
        read_reference(str(ROOT / "benchmarks" / "results" / "drug_reviews.json"), "rating")


def test_a_bad_reference_file_is_refused_with_the_fix(tmp_path):
    from selectune.compare.reference import read_reference

    for name, text, expected in (("notes.md", "# not json", "is not JSON"),
                                 ("cut.json", '{"tasks": {"rating": {"methods": {"bitfit": {}}}}}', "is incomplete (a row lacks 'test')"),
                                 ("list.json", "[1, 2]", "is not a benchmark JSON with 'chosen' or 'tasks' rows")):
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=re.escape(expected)):
            read_reference(str(tmp_path / name), "rating")
    with pytest.raises(FileNotFoundError, match="not found; give a benchmark JSON"):
        read_reference(str(tmp_path / "nothing.json"))
