"""Data checks: leakage refused (patient id, copied texts/rows, inside TRAIN's own validation split),
warnings with numbers, identifier-like text warned about or refused and never repeated in any output."""
import json
import time
from pathlib import Path

import pandas as pd
import pytest

from selectune.cli import main
from selectune.data import DataError, DataLeakageError, IdentifierError, run_checks
from selectune.data.identifiers import count_identifiers

from .conftest import NEGATIVE, POSITIVE


def reviews(n, start=0, patients=None):
    """n distinct short reviews, alternating pos/neg; optional patient ids."""
    rows = [{"text": f"{(POSITIVE if i % 2 == 0 else NEGATIVE)[i % 10]} (note {i})", "label": "pos" if i % 2 == 0 else "neg"}
            for i in range(start, start + n)]
    frame = pd.DataFrame(rows)
    if patients is not None:
        frame.insert(0, "patient", patients)
    return frame


def write(path: Path, frame: pd.DataFrame) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return str(path)


def result(report, check):
    return next(r for r in report.results if r.check == check)


def all_output(folder: Path) -> str:
    """Every file under folder, decoded leniently, joined: what a reader of the outputs could see."""
    return "\n".join(p.read_bytes().decode("utf-8", "replace") for p in sorted(folder.rglob("*")) if p.is_file())


# ---------------------------------------------------------------- leakage: patient id

def test_patient_in_two_splits_is_refused_with_counts_not_ids():
    train = reviews(20, patients=[f"MRN-90{i:03d}" for i in range(20)])
    test = reviews(10, start=20, patients=[f"MRN-90{i:03d}" for i in (3, 4, 5, 50, 51, 52, 53, 54, 55, 56)])
    with pytest.raises(DataLeakageError) as excinfo:
        run_checks({"train": train, "test": test}, text_col="text", label_col="label", id_col="patient")
    message = str(excinfo.value)
    assert "3 values of the patient/group id column 'patient'" in message
    assert "train rows 4, 5, 6" in message and "test rows 1, 2, 3" in message  # 1-based data rows of each file
    assert "MRN-90" not in message and "MRN-90" not in json.dumps(excinfo.value.report.to_json())
    pair = result(excinfo.value.report, "id_leakage").details["pairs"][0]
    assert pair["splits"] == ["train", "test"] and pair["shared"] == 3 and pair["row_counts"] == {"train": 3, "test": 3}


def test_patient_ids_match_across_file_formats():
    # 17 from a CSV and "17" / 17.0 from JSON lines are the same patient
    train = reviews(4, patients=[17, 18, 19, 20])
    test = reviews(2, start=4, patients=["17", 99.0])
    report = run_checks({"train": train, "test": test}, text_col="text", id_col="patient", raise_on_refusal=False)
    assert result(report, "id_leakage").details["pairs"][0]["shared"] == 1


def test_check_command_refuses_shared_patient_and_writes_the_report(tmp_path, capsys):
    train = write(tmp_path / "in" / "train.csv", reviews(40, patients=[f"P{i // 2}" for i in range(40)]))
    val = write(tmp_path / "in" / "val.csv", reviews(10, start=40, patients=["P1", "P2"] + [f"Q{i}" for i in range(8)]))
    code = main(["check", train, "--validation", val, "--text-col", "text", "--id-col", "patient", "--out", str(tmp_path / "out" / "c.json")])
    out = capsys.readouterr().out
    assert code == 1  # a refusal is a finding (like a failed gate); 2 is kept for bad input
    assert "REFUSE   id_leakage" in out and "2 values of the patient/group id column 'patient'" in out
    assert "data checks REFUSED" in out
    saved = json.loads((tmp_path / "out" / "c.json").read_text())
    assert saved["status"] == "refuse" and "exit_code" not in saved
    assert result_json(saved, "id_leakage")["details"]["pairs"][0]["shared"] == 2


def result_json(saved, check):
    return next(r for r in saved["results"] if r["check"] == check)


# ---------------------------------------------------------------- leakage: copied texts and rows

def test_same_text_in_train_and_test_is_refused_even_with_other_case_and_spacing():
    train, test = reviews(20), reviews(10, start=20)
    test.loc[7, "text"] = "  " + train.loc[12, "text"].upper().replace(" ", "   ") + " "
    with pytest.raises(DataLeakageError) as excinfo:
        run_checks({"train": train, "test": test}, text_col="text", label_col="label")
    message = str(excinfo.value)
    assert "1 identical text in more than one split" in message and "train rows 13; test rows 8" in message
    assert train.loc[12, "text"] not in message


def test_identical_tabular_rows_across_splits_are_refused():
    train = pd.DataFrame({"age": [50, 61, 72, 45], "bmi": [22.5, 30.1, 27.0, 24.4], "label": ["0", "1", "1", "0"]})
    # the same patient, relabelled; ages as floats, as JSON lines may give them
    test = pd.DataFrame({"age": [61.0, 33.0], "bmi": [30.1, 19.0], "label": ["0", "0"]})
    with pytest.raises(DataLeakageError, match=r"1 identical row in more than one split: 1 row shared by train and test \(train rows 2; test rows 1\)"):
        run_checks({"train": train, "test": test}, feature_cols=["age", "bmi"], label_col="label")


def test_duplicates_in_the_training_file_crossing_into_the_validation_split_are_refused(tmp_path):
    # Every text twice in TRAIN: a random validation split must put copies on both sides, and `check`
    # (like `train`) names rows of the training file.
    frame = pd.concat([reviews(20), reviews(20)], ignore_index=True)
    frame.insert(0, "patient", [f"P{i % 20}" for i in range(40)])  # the two copies are the same patient
    path = write(tmp_path / "train.csv", frame)
    report = run(tmp_path, "check", path, "--text-col", "text", "--val-fraction", "0.25")
    leak = result_json(report, "duplicate_leakage")
    assert leak["status"] == "refuse" and leak["details"]["pairs"][0]["splits"] == ["train", "validation"]
    rows = leak["details"]["pairs"][0]["rows"]
    assert all(1 <= r <= 40 for r in rows["train"] + rows["validation"])  # rows of train.csv, header not counted
    for t, v in zip(sorted(rows["train"], key=lambda r: (r - 1) % 20), sorted(rows["validation"], key=lambda r: (r - 1) % 20)):
        assert (t - 1) % 20 == (v - 1) % 20  # each pair really is one text in two rows
    # split by patient, the copies stay together and nothing leaks
    grouped = run(tmp_path, "check", path, "--text-col", "text", "--val-fraction", "0.25", "--id-col", "patient")
    assert result_json(grouped, "duplicate_leakage")["status"] == "pass" and result_json(grouped, "id_leakage")["status"] == "pass"


def run(tmp_path, *argv):
    out = tmp_path / f"report-{len(list(tmp_path.glob('report-*')))}.json"
    main([*map(str, argv), "--out", str(out)])
    return json.loads(out.read_text())


# ---------------------------------------------------------------- warnings with numbers

def test_imbalance_shift_and_small_subgroups_warn_with_numbers():
    train = reviews(40)
    train["label"] = ["pos"] * 36 + ["neg"] * 4
    train["site"] = ["A"] * 37 + ["B"] * 3
    test = reviews(20, start=40)
    test["label"] = ["pos"] * 10 + ["neg"] * 10
    test["site"] = ["A"] * 18 + ["C"] * 2
    report = run_checks({"train": train, "test": test}, text_col="text", label_col="label", group_cols="site", min_group_size=5)
    assert report.status == "warn" and not report.refusals
    imbalance = result(report, "class_imbalance")
    assert imbalance.status == "warn"
    assert "neg 4 (10.0%), pos 36 (90.0%)" in imbalance.message and "9.0x the smallest" in imbalance.message
    shift = result(report, "prevalence_shift")
    assert shift.status == "warn" and "neg 10.0% in train vs 50.0% in test (+40.0 points" in shift.message
    assert shift.details["shifts"][0]["chi2_p"] < 0.01
    small = result(report, "subgroup_size")
    assert small.status == "warn"
    assert "site in train: 1 of 2 groups below 5 rows (B n=3)" in small.message
    assert "site in test: 1 of 2 groups below 5 rows (C n=2)" in small.message and "1 group(s) absent from train" in small.message
    assert small.details["sizes"]["site"]["test"] == {"A": 18, "C": 2}


def test_balanced_splits_pass_without_warnings():
    report = run_checks({"train": reviews(40), "test": reviews(20, start=40)}, text_col="text", label_col="label")
    assert report.status == "pass", [r.message for r in report.warnings]
    assert result(report, "class_imbalance").details["largest_to_smallest"] == 1.0


def test_regression_target_shift_warns():
    train = pd.DataFrame({"x": range(50), "y": [float(i % 10) for i in range(50)]})
    test = pd.DataFrame({"x": range(100, 130), "y": [float(20 + i % 5) for i in range(30)]})
    report = run_checks({"train": train, "test": test}, feature_cols=["x"], label_col="y", task="regression")
    shift = result(report, "target_shift")
    assert shift.status == "warn" and "test mean 22 vs 4.5" in shift.message


# ---------------------------------------------------------------- identifiers

FAKE_IDENTIFIERS = {  # type -> strings injected into free text; none may ever appear in any output
    "email": ["jane.roe@example.org", "m.smith+clinic@hospital.example.com"],
    "phone": ["(555) 867-5309", "+44 20 7946 0958"],
    "id_number": ["MRN: 4471234", "8812345678"],
    "date": ["3/14/2021", "March 6th, 2019"],
    "url": ["https://portal.example.com/patient/88"],
}
SECRETS = [s for values in FAKE_IDENTIFIERS.values() for s in values] + ["4471234", "867-5309", "7946 0958", "portal.example"]


def text_with_identifiers(tmp_path):
    train, test = reviews(40), reviews(20, start=40)
    train.loc[3, "text"] += " email jane.roe@example.org or call (555) 867-5309"
    train.loc[8, "text"] += " MRN: 4471234, seen 3/14/2021"
    train.loc[30, "text"] += " see https://portal.example.com/patient/88"
    test.loc[2, "text"] += " contact m.smith+clinic@hospital.example.com, +44 20 7946 0958, account 8812345678"
    test.loc[5, "text"] += " since March 6th, 2019"
    return write(tmp_path / "in" / "train.csv", train), write(tmp_path / "in" / "test.csv", test)


@pytest.mark.parametrize("kind", sorted(FAKE_IDENTIFIERS))
def test_each_identifier_type_is_found(kind):
    for value in FAKE_IDENTIFIERS[kind]:
        assert count_identifiers(f"the note says {value} today") == {kind: 1}, value


def test_ordinary_clinical_text_is_not_flagged():
    text = ("Took 20 mg twice daily for 2 weeks, then 1-2 tablets; 11.25mg depot every 3 months. BP 120/80, "
            "A1C 7.2%, INR 2.5-3.0, half a tab (1/2) at 10:30 pm. Lost 12 lbs since 2013, started March 2015, "
            "100,000 units of vitamin D, 1,000,000 thanks! Level 6.5 on day 3 of 7, May 5 mg doses, ICD-10 F32.1, "
            "5ft10, 24/7 support, week 12, 2016-2017, dose 100-200 mg, I may 2 times a day.")
    assert count_identifiers(text) == {}


def test_scanning_time_stays_linear_on_long_adversarial_text():
    # A pattern that backtracks from every position takes minutes on 50,000 characters; linear ones take milliseconds.
    for text in ("a" * 50_000, "1" * 50_000, "1-" * 25_000, "a." * 25_000, "x@" + "a." * 25_000, "+1 " * 17_000):
        start = time.perf_counter()
        count_identifiers(text)
        assert time.perf_counter() - start < 5, text[:8]


def test_other_free_text_columns_can_be_scanned_in_tabular_data():
    frame = pd.DataFrame({"age": [50, 61, 72], "notes": ["stable", "call 555-123-4567", None], "label": ["0", "1", "0"]})
    assert result(run_checks({"train": frame}, feature_cols=["age"], label_col="label"), "identifiers").status == "skipped"
    found = result(run_checks({"train": frame}, feature_cols=["age"], label_col="label", phi_cols="notes"), "identifiers")
    assert found.status == "warn" and found.details["matches"]["phone"] == 1 and found.details["per_split"]["train"]["notes"]["rows"] == [2]


def test_group_names_that_look_like_identifiers_are_masked():
    frame = reviews(6)
    frame["clinic"] = ["call 555-123-4567"] * 2 + ["3/14/2021"] * 3 + ["north"]
    small = result(run_checks({"train": frame}, text_col="text", group_cols="clinic", min_group_size=5), "subgroup_size")
    assert small.details["sizes"]["clinic"]["train"] == {"[date]": 3, "call [phone]": 2, "north": 1}
    assert "555-123" not in small.message and "3/14" not in small.message and "call [phone] n=2" in small.message


def test_a_split_without_the_id_column_is_reported_unchecked():
    train, test = reviews(10, patients=list(range(10))), reviews(5, start=10)
    leak = result(run_checks({"train": train, "test": test}, text_col="text", id_col="patient"), "id_leakage")
    assert leak.status == "warn" and leak.details["unchecked_splits"] == ["test"] and "were not checked" in leak.message


def test_identifiers_warn_by_default_with_counts_and_rows_only(tmp_path, capfd):
    train, test = text_with_identifiers(tmp_path)
    code = main(["check", train, "--test", test, "--text-col", "text", "--out", str(tmp_path / "out" / "checks.json")])
    assert code == 0
    captured = capfd.readouterr()
    saved = json.loads((tmp_path / "out" / "checks.json").read_text())
    found = result_json(saved, "identifiers")
    assert found["status"] == "warn"
    assert found["details"]["matches"] == {"email": 2, "phone": 2, "id_number": 2, "date": 2, "url": 1}
    # train.csv rows 4, 9 and 31 (some may sit in the validation split cut from it); test.csv rows 3 and 6
    assert found["details"]["per_split"]["test"]["text"]["rows"] == [3, 6]
    assert found["details"]["rows_with_identifiers"] == 5
    assert "9 matches (email 2, url 1, phone 2, id_number 2, date 2) in 5 of 60 rows" in captured.out
    for secret in SECRETS:
        assert secret not in captured.out + captured.err and secret not in all_output(tmp_path / "out"), secret


def test_phi_policy_refuse_refuses_and_still_does_not_repeat_them(tmp_path, capfd):
    train, test = text_with_identifiers(tmp_path)
    code = main(["check", train, "--test", test, "--text-col", "text", "--phi-policy", "refuse", "--out", str(tmp_path / "out" / "c.json")])
    captured = capfd.readouterr()
    assert code == 1 and "REFUSE   identifiers" in captured.out and "--phi-policy refuse" in captured.out
    for secret in SECRETS:
        assert secret not in captured.out + captured.err and secret not in all_output(tmp_path / "out"), secret
    with pytest.raises(IdentifierError, match="Refused under --phi-policy refuse"):
        run_checks({"train": pd.read_csv(train)}, text_col="text", phi_policy="refuse")


# ---------------------------------------------------------------- in `train`

def train_args(train, out, model, *extra):
    return ["train", str(train), "--model", str(model), "--text-col", "text", "--label-col", "label", "--epochs", "1",
            "--batch-size", "16", "--max-length", "32", "--out", str(out), "--no-progress", *map(str, extra)]


def test_train_writes_checks_json_and_never_repeats_identifiers(tiny_bert_dir, tmp_path, capfd):
    train, test = text_with_identifiers(tmp_path)
    assert main(train_args(train, tmp_path / "out" / "run", tiny_bert_dir, "--test", test)) == 0
    captured = capfd.readouterr()
    assert "selectune train: warning: Identifier-like strings in free text (text): 9 matches" in captured.err
    checks = json.loads((tmp_path / "out" / "run" / "checks.json").read_text())
    assert checks["status"] == "warn" and checks["splits"]["test"] == {"rows": 20, "source": test}
    assert checks["splits"]["validation"]["source"].startswith(train)  # cut from the training file
    assert {r["check"]: r["status"] for r in checks["results"]}["duplicate_leakage"] == "pass"
    assert json.loads((tmp_path / "out" / "run" / "run_config.json").read_text())["phi_policy"] == "warn"
    for secret in SECRETS:
        assert secret not in captured.out + captured.err and secret not in all_output(tmp_path / "out"), secret


@pytest.mark.parametrize("case", ["shared text", "shared patient", "identifiers refused"])
def test_train_refuses_and_writes_nothing(case, tiny_bert_dir, tmp_path, capfd):
    extra = []
    if case == "identifiers refused":
        train, test = text_with_identifiers(tmp_path)
        extra = ["--phi-policy", "refuse"]
    else:
        frame = reviews(40, patients=[f"P{i}" for i in range(40)])
        held = reviews(10, start=40, patients=[f"T{i}" for i in range(10)])
        if case == "shared text":
            held.loc[4, "text"] = frame.loc[17, "text"]
        else:
            held.loc[[1, 2], "patient"] = ["P5", "P6"]
            extra = ["--group-col", "patient"]
        train, test = write(tmp_path / "in" / "train.csv", frame), write(tmp_path / "in" / "test.csv", held)
    out = tmp_path / "out" / "run"
    assert main(train_args(train, out, tiny_bert_dir, "--test", test, *extra)) == 2
    err = capfd.readouterr().err
    expected = {"shared text": "test rows 5)",  # train.csv row 18 is in train or in the validation split cut from it
                "shared patient": "2 values of the patient/group id column 'patient' in more than one split", "identifiers refused": "Refused under --phi-policy refuse"}[case]
    assert err.startswith("selectune train: error: ") and expected in err
    assert not (tmp_path / "out").exists()  # nothing written, not even a partial folder
    for secret in SECRETS:
        assert secret not in err


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("argv, expected", [
    (["--phi-policy", "strict"], "Unknown --phi-policy 'strict': use 'warn'"),
    (["--group-cols", "site"], "Column 'site' (--group-cols) not found in the train data"),
    (["--phi-cols", "notes"], "Column 'notes' (--phi-cols) not found"),
    (["--id-col", "patient"], "Column 'patient' not found in train file"),  # and the fix names --id-col (below)
    (["--min-group-size", "0"], "use a size >= 1"),
    (["--text-col", "body"], "Column 'body' not found"),
])
def test_bad_input_names_the_problem_and_writes_nothing(argv, expected, tmp_path, capsys):
    train = write(tmp_path / "in" / "train.csv", reviews(40))
    args = ["check", train, *(["--text-col", "text"] if "--text-col" not in argv else []), *argv, "--out", str(tmp_path / "out" / "c.json")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("selectune check: error: ") and expected in err, err
    assert not (tmp_path / "out").exists()


def test_id_col_must_not_double_as_a_subgroup():
    frame = reviews(10, patients=list(range(10)))
    with pytest.raises(DataError, match="both the patient/group id"):
        run_checks({"train": frame}, text_col="text", id_col="patient", group_cols=["patient"])
