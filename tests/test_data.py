"""Tests for selectune.data: readers, validation, splits and bundled data sets (real files, no mocks)."""

import gzip

import numpy as np
import pandas as pd
import pytest

from selectune.data import BUNDLED, DataError, Splits, export_bundled, load_splits, read_table


def text_frame(n=120, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.choice(["pos", "neg", "neu"], size=n, p=[0.5, 0.3, 0.2])
    return pd.DataFrame({
        "id": range(n),
        "patient": [f"p{i // 4}" for i in range(n)],  # 4 rows per patient
        "text": [f"note number {i}" for i in range(n)],
        "label": labels,
        "age": rng.integers(20, 90, size=n),
        "bmi": rng.normal(27, 4, size=n).round(1),
    })


def write_csv(tmp_path, frame, name="train.csv"):
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return str(path)


def message(excinfo):
    return str(excinfo.value)


# ---------------------------------------------------------------- readers

@pytest.mark.parametrize("name", ["d.csv", "d.tsv", "d.jsonl", "d.parquet", "d.csv.gz", "D.CSV", "d.jsonl.gz"])
def test_formats_round_trip(tmp_path, name):
    frame = text_frame(10)
    path = tmp_path / name
    lower = name.lower()
    if ".parquet" in lower:
        frame.to_parquet(path, index=False)
    elif ".jsonl" in lower:
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_csv(path, index=False, sep="\t" if ".tsv" in lower else ",")
    got = read_table(path)
    assert list(got.columns) == list(frame.columns)
    assert got["text"].tolist() == frame["text"].tolist()
    assert got["label"].tolist() == frame["label"].tolist()
    assert got["age"].tolist() == frame["age"].tolist()
    assert np.allclose(got["bmi"], frame["bmi"])


def test_na_like_strings_are_kept(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\na,None\nb,NA\nc,\n")
    got = read_table(path)
    assert got["label"].iloc[:2].tolist() == ["None", "NA"]
    assert pd.isna(got["label"].iloc[2])


def test_utf8_bom_is_not_part_of_first_column(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes("\ufefflabel,text\npos,caf\u00e9\n".encode("utf-8"))
    assert list(read_table(path).columns) == ["label", "text"]


@pytest.mark.parametrize("content, expected", [
    (b"", "no rows"),
    (b"label,text\n", "no rows"),
    (b"\n\n", "no rows"),
    (b"label,text\npos,caf\xe9\n", "UTF-8"),
    (b'label,text\npos,"unclosed\n', "malformed"),
    (b"label,text\npos,a\nneg,b,c,d\n", "malformed"),
])
def test_bad_csv(tmp_path, content, expected):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(DataError) as excinfo:
        read_table(path)
    assert expected in message(excinfo) and "bad.csv" in message(excinfo)


def test_missing_file_and_bad_extension(tmp_path):
    with pytest.raises(DataError) as excinfo:
        read_table(tmp_path / "nope.csv")
    assert "not found" in message(excinfo) and "nope.csv" in message(excinfo)
    (tmp_path / "d.xlsx").write_text("x")
    with pytest.raises(DataError) as excinfo:
        read_table(tmp_path / "d.xlsx")
    assert "d.xlsx" in message(excinfo) and ".parquet" in message(excinfo)


def test_bad_jsonl_names_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": \n')
    with pytest.raises(DataError) as excinfo:
        read_table(path)
    assert "bad.jsonl" in message(excinfo) and "line 2" in message(excinfo)


def test_bad_parquet(tmp_path):
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"this is not parquet at all")
    with pytest.raises(DataError) as excinfo:
        read_table(path)
    assert "bad.parquet" in message(excinfo)


# ---------------------------------------------------------------- splits

def test_split_sizes_protocol_and_types(tmp_path):
    train = write_csv(tmp_path, text_frame())
    s = load_splits(train, label_col="label", text_col="text", val_fraction=0.2, test_fraction=0.2, seed=1)
    assert isinstance(s, Splits)
    assert (len(s.train), len(s.validation), len(s.test)) == (72, 24, 24)
    assert s.labels == ["neg", "neu", "pos"]
    assert s.protocol["source"] == "split" and s.protocol["stratified"] is True
    assert s.protocol["sizes"] == {"train": 72, "validation": 24, "test": 24}
    assert s.protocol["seed"] == 1 and s.protocol["group_col"] is None
    ids = [set(f["id"]) for f in (s.train, s.validation, s.test)]
    assert set.union(*ids) == set(range(120)) and sum(map(len, ids)) == 120
    assert list(s.train.index) == list(range(72))


def test_splits_deterministic_per_seed(tmp_path):
    train = write_csv(tmp_path, text_frame())
    a = load_splits(train, label_col="label", text_col="text", seed=3)
    b = load_splits(train, label_col="label", text_col="text", seed=3)
    c = load_splits(train, label_col="label", text_col="text", seed=4)
    pd.testing.assert_frame_equal(a.train, b.train)
    pd.testing.assert_frame_equal(a.validation, b.validation)
    assert a.validation["id"].tolist() != c.validation["id"].tolist()


def test_stratification_keeps_proportions(tmp_path):
    frame = text_frame(400)
    train = write_csv(tmp_path, frame)
    s = load_splits(train, label_col="label", text_col="text", val_fraction=0.25, seed=7)
    overall = frame["label"].value_counts(normalize=True)
    for part in (s.train, s.validation):
        share = part["label"].value_counts(normalize=True)
        assert (share - overall).abs().max() < 0.02


def test_tiny_class_falls_back_to_unstratified(tmp_path):
    frame = text_frame(40)
    frame.loc[0, "label"] = "rare"  # a single row cannot be stratified
    train = write_csv(tmp_path, frame)
    succeeded = 0
    for seed in range(10):
        try:
            s = load_splits(train, label_col="label", text_col="text", seed=seed)
        except DataError as err:  # the rare row went to validation: the error must say why
            assert "'rare'" in str(err) and "too few rows" in str(err)
            continue
        succeeded += 1
        assert s.protocol["stratified"] is False and "rare" in s.labels
    assert succeeded > 0


@pytest.mark.parametrize("test_fraction", [0.0, 0.2])
def test_groups_land_in_one_split(tmp_path, test_fraction):
    train = write_csv(tmp_path, text_frame(200))
    s = load_splits(train, label_col="label", text_col="text", group_col="patient",
                    val_fraction=0.2, test_fraction=test_fraction, seed=2)
    parts = [s.train, s.validation] + ([s.test] if test_fraction else [])
    groups = [set(p["patient"]) for p in parts]
    for i in range(len(groups)):
        for j in range(i + 1, len(groups)):
            assert not groups[i] & groups[j]
    assert sum(map(len, parts)) == 200
    assert s.protocol["group_col"] == "patient"
    again = load_splits(train, label_col="label", text_col="text", group_col="patient",
                        val_fraction=0.2, test_fraction=test_fraction, seed=2)
    pd.testing.assert_frame_equal(s.validation, again.validation)


def test_group_split_without_stratification(tmp_path):
    frame = text_frame(40)
    frame["label"] = ["b"] * 4 + ["a"] * 32 + ["b"] * 4  # class b in only 2 patients -> cannot stratify
    s = load_splits(write_csv(tmp_path, frame), label_col="label", text_col="text", group_col="patient", seed=5)
    assert s.protocol["stratified"] is False
    assert not set(s.train["patient"]) & set(s.validation["patient"])


def test_split_taking_whole_class_is_explained(tmp_path):
    frame = text_frame(40)
    frame["label"] = ["a"] * 36 + ["b"] * 4  # class b sits in one patient, which may land in validation
    for seed in range(10):
        try:
            load_splits(write_csv(tmp_path, frame), label_col="label", text_col="text", group_col="patient", seed=seed)
        except DataError as err:
            assert "'b'" in str(err) and "too few rows (or groups)" in str(err)
            return
    pytest.fail("expected some seed to move patient p9 out of training")


def test_too_few_groups(tmp_path):
    frame = text_frame(20)
    frame["patient"] = "p1"
    with pytest.raises(DataError) as excinfo:
        load_splits(write_csv(tmp_path, frame), label_col="label", text_col="text", group_col="patient")
    assert "patient" in message(excinfo) and "2 groups" in message(excinfo)


def test_files_are_used_as_given(tmp_path):
    frame = text_frame()
    train = write_csv(tmp_path, frame.iloc[:80])
    val = write_csv(tmp_path, frame.iloc[80:100], "val.csv")
    test = write_csv(tmp_path, frame.iloc[100:], "test.csv")
    s = load_splits(train, val, test, label_col="label", text_col="text")
    assert (len(s.train), len(s.validation), len(s.test)) == (80, 20, 20)
    assert s.protocol["source"] == "files" and s.protocol["stratified"] is False
    assert s.train["id"].tolist() == list(range(80))


def test_tabular_features_and_comma_string(tmp_path):
    train = write_csv(tmp_path, text_frame())
    s = load_splits(train, label_col="label", feature_cols="age, bmi", seed=0)
    assert s.protocol["feature_cols"] == ["age", "bmi"]
    assert s.train["age"].dtype.kind in "iu" and s.train["bmi"].dtype.kind == "f"


def test_numeric_labels_become_strings_and_regression_floats(tmp_path):
    frame = text_frame()
    frame["label"] = (frame["age"] > 50).astype(int)
    s = load_splits(write_csv(tmp_path, frame), label_col="label", text_col="text")
    assert s.labels == ["0", "1"] and set(s.train["label"]) == {"0", "1"}
    r = load_splits(write_csv(tmp_path, frame), label_col="bmi", feature_cols=["age"], task="regression")
    assert r.labels is None and r.train["bmi"].dtype == float and r.protocol["stratified"] is False


# ---------------------------------------------------------------- validation errors

def expect_error(tmp_path, frame, *fragments, files=None, **kwargs):
    kwargs.setdefault("label_col", "label")
    if "feature_cols" not in kwargs:
        kwargs.setdefault("text_col", "text")
    train = write_csv(tmp_path, frame)
    with pytest.raises(DataError) as excinfo:
        load_splits(train, *(files or ()), **kwargs)
    for fragment in fragments:
        assert fragment in message(excinfo), (fragment, message(excinfo))
    return message(excinfo)


def test_missing_column_lists_columns_and_flag(tmp_path):
    msg = expect_error(tmp_path, text_frame(), "'body'", "--text-col", "train.csv", "label", text_col="body")
    assert "patient" in msg  # the columns the file does have
    expect_error(tmp_path, text_frame(), "'diagnosis'", "--label-col", label_col="diagnosis")
    expect_error(tmp_path, text_frame(), "'weight'", "--feature-cols", feature_cols=["age", "weight"])
    expect_error(tmp_path, text_frame(), "'ward'", "--group-col", group_col="ward")


def test_missing_column_in_validation_file(tmp_path):
    val = write_csv(tmp_path, text_frame(10).drop(columns="text"), "val.csv")
    expect_error(tmp_path, text_frame(), "'text'", "validation file", "val.csv", files=[val])


def test_text_or_features_exactly_one(tmp_path):
    expect_error(tmp_path, text_frame(), "--text-col", "--feature-cols", feature_cols=["age"], text_col="text")
    expect_error(tmp_path, text_frame(), "--text-col", "--feature-cols", text_col=None, feature_cols=None)


def test_missing_labels_report_rows(tmp_path):
    frame = text_frame()
    frame.loc[[3, 9], "label"] = np.nan
    frame.loc[20, "label"] = "  "
    expect_error(tmp_path, frame, "3 row(s)", "rows 4, 10, 21", "'label'", "Drop")


def test_unseen_label_in_test_file(tmp_path):
    test = text_frame(10)
    test.loc[2, "label"] = "metastatic"
    path = write_csv(tmp_path, test, "test.csv")
    expect_error(tmp_path, text_frame(), "'metastatic'", "never saw", "test", files=[None, path])


def test_single_class(tmp_path):
    frame = text_frame()
    frame["label"] = "pos"
    expect_error(tmp_path, frame, "at least 2 classes", "pos")


def test_regression_needs_numbers(tmp_path):
    frame = text_frame()
    frame["score"] = frame["bmi"].astype(str)
    frame.loc[5, "score"] = "high"
    expect_error(tmp_path, frame, "'high'", "rows 6", label_col="score", task="regression")


def test_non_numeric_and_nan_features(tmp_path):
    frame = text_frame()
    frame["sex"] = "F"
    expect_error(tmp_path, frame, "'sex'", "'F'", "numerically", feature_cols=["age", "sex"])
    frame = text_frame()
    frame["bmi"] = frame["bmi"].astype(object)
    frame.loc[7, "bmi"] = "?"
    expect_error(tmp_path, frame, "'bmi'", "'?'", "rows 8", feature_cols=["bmi"])
    frame = text_frame()
    frame.loc[[1, 2], "bmi"] = np.nan
    expect_error(tmp_path, frame, "'bmi'", "2 missing", "rows 2, 3", "Impute", feature_cols=["age", "bmi"])


def test_empty_and_non_string_text(tmp_path):
    frame = text_frame()
    frame.loc[[0, 5], "text"] = np.nan
    expect_error(tmp_path, frame, "2 row(s)", "rows 1, 6", "empty text")
    path = tmp_path / "t.jsonl"
    rows = [{"text": "a", "label": "x"}, {"text": 42, "label": "y"}, {"text": "c", "label": "x"}]
    pd.DataFrame(rows).to_json(path, orient="records", lines=True)
    with pytest.raises(DataError) as excinfo:
        load_splits(str(path), str(path), label_col="label", text_col="text")
    assert "42" in message(excinfo) and "rows 2" in message(excinfo)


def test_empty_split_suggests_fraction(tmp_path):
    expect_error(tmp_path, text_frame(10), "--val-fraction", "empty", val_fraction=0.999)
    expect_error(tmp_path, text_frame(10), "--val-fraction", "0 to train on every row", val_fraction=-0.1)
    expect_error(tmp_path, text_frame(10), "--val-fraction", val_fraction=1.0)


def test_val_fraction_zero_keeps_every_row_for_training(tmp_path):
    frame = text_frame(40)
    train = write_csv(tmp_path, frame)
    s = load_splits(train, label_col="label", text_col="text", val_fraction=0, test_fraction=0.25, seed=3)
    assert s.validation is None and len(s.train) == 30 and len(s.test) == 10
    assert s.protocol["val_fraction"] == 0 and s.protocol["sizes"]["validation"] == 0 and "validation" not in s.source_rows
    whole = load_splits(train, label_col="label", text_col="text", val_fraction=0)
    assert list(whole.train["text"]) == list(frame["text"]) and whole.test is None  # every row, in file order


# ---------------------------------------------------------------- bundled data

def test_export_drug_reviews(tmp_path):
    paths = export_bundled("drug-reviews", str(tmp_path / "drug"))
    assert set(paths) == {"train", "test"}
    train, test = read_table(paths["train"]), read_table(paths["test"])
    assert (len(train), len(test)) == (599, 379)  # the training copy of a review that is also in test is dropped
    for frame in (train, test):
        assert not frame["review"].str.contains("&#039;").any()
        assert not frame["review"].str.startswith('"').any()
        assert set(frame["rating"]) == {"positive", "neutral", "negative"}
        assert frame["year"].between(2008, 2017).all() and frame["review_id"].is_unique
    assert not list((tmp_path / "drug").glob("*.tmp"))
    info = BUNDLED["drug-reviews"]
    s = load_splits(paths["train"], test=paths["test"], label_col=info.label_col, text_col=info.text_col)
    assert s.labels == ["negative", "neutral", "positive"]


def test_export_breast_cancer(tmp_path):
    path = export_bundled("breast-cancer", str(tmp_path))["data"]
    frame = read_table(path)
    assert len(frame) == 569 and set(frame["label"]) == {"malignant", "benign"}
    assert frame["label"].value_counts()["malignant"] == 212
    assert not any(" " in c for c in frame.columns) and frame["row_id"].is_unique
    assert list(BUNDLED["breast-cancer"].feature_cols) == [c for c in frame.columns if c not in ("row_id", "label")]


def test_export_diabetes(tmp_path):
    path = export_bundled("diabetes", str(tmp_path))["data"]
    frame = read_table(path)
    info = BUNDLED["diabetes"]
    assert len(frame) == 768 and set(frame[info.label_col]) == {0, 1}
    s = load_splits(path, label_col=info.label_col, feature_cols=list(info.feature_cols), seed=0)
    assert s.labels == ["0", "1"] and len(s.train) + len(s.validation) == 768


def test_export_unknown_name(tmp_path):
    with pytest.raises(DataError) as excinfo:
        export_bundled("mimic", str(tmp_path))
    assert "mimic" in message(excinfo) and "drug-reviews" in message(excinfo)
