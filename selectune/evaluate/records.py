"""The files ``selectune gate`` writes, as typed models: ``evaluation.json`` (``Evaluation``) and ``gate.json`` (``GateRecord``).

The gate builds these models and dumps them; the report and the registry parse the files through them, so a
field is named in one place and a damaged or foreign file is refused with the field that is wrong. Keys that a
writer left out (a regression model has no curves, a delta no merge record) stay out of the JSON: dump with
``dump_json`` (``exclude_unset``), never ``model_dump_json``.

The JSON Schemas shipped in ``selectune/schemas/`` are generated from these models; after changing a model run
``python -m selectune.evaluate.records`` to write them again (a test compares them).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

EVALUATION_SCHEMA, GATE_SCHEMA = "selectune-evaluation/1", "selectune-gate/1"
SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
Number = float | int  # counts stay integers in the JSON; rates and metrics are floats


class Record(BaseModel):
    """Strict: a key the model does not know is an error, so the schema is the whole truth about the file."""
    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)
    always_written: ClassVar[tuple[str, ...]] = ()  # fields with defaults that every file carries

    def model_post_init(self, context: Any) -> None:
        self.model_fields_set.update(self.always_written)

    def dump(self) -> dict[str, Any]:
        """Plain dict of what was set (absent keys stay absent; a key set to None is written as null)."""
        return self.model_dump(exclude_unset=True)

    def dump_json(self) -> bytes:
        """The file's bytes: sorted keys, two-space indent, no NaN (undefined values are null)."""
        return (json.dumps(self.dump(), sort_keys=True, indent=2, default=str, allow_nan=False) + "\n").encode()


# ---- evaluation.json -------------------------------------------------------------------------------------

class Estimate(Record):
    """A point estimate with its percentile bootstrap CI (null where undefined)."""
    value: float | None
    ci_low: float | None
    ci_high: float | None
    valid_resamples: int
    """Resamples in which the metric was defined (e.g. both classes present for AUROC)."""


class RocCurve(Record):
    fpr: list[float | None]
    tpr: list[float | None]
    threshold: list[float | None]


class PrCurve(Record):
    precision: list[float | None]
    recall: list[float | None]
    threshold: list[float | None]


class CalibrationCurve(Record):
    predicted: list[float | None]
    observed: list[float | None]
    count: list[int]
    """Rows per non-empty bin."""
    of: str
    bins: int
    strategy: str


class Curves(Record):
    roc: dict[str, RocCurve]
    """Class label -> one-vs-rest ROC points (binary: the positive class only)."""
    pr: dict[str, PrCurve]
    calibration: CalibrationCurve


class Confusion(Record):
    tp: int
    fp: int
    fn: int
    tn: int


class Residuals(Record):
    mean: float | None
    sd: float | None


class Threshold(Record):
    value: float
    rule: str
    validation: dict[str, Any] | None
    """Where the threshold was chosen: a file (path, sha256) or the training run's validation split; null for fixed=."""


class ModelIdentity(Record):
    """Who a model is; delta fields for a run or delta folder, ``merge``/``weights_sha256`` for a merged folder."""
    source: str
    kind: Literal["run", "delta", "merged"]
    task: dict[str, Any]
    delta: str | None = None
    delta_weights_sha256: str | None = None
    delta_config_sha256: str | None = None
    delta_bytes: int | None = None
    base_model: str | None = None
    base_fingerprint: str | None = None
    method: str | None = None
    method_options: dict[str, Any] | None = None
    selectune_version: str | None = None
    merge: dict[str, Any] | None = None
    weights_sha256: dict[str, str] | None = None
    run_config: dict[str, Any] | None = None
    run_metrics: dict[str, Any] | None = None


class ModelEvaluation(Record):
    metrics: dict[str, Estimate]
    threshold: Threshold | float | None
    """The gate writes a Threshold (classification) or null (regression); a bare scorecard the number used."""
    curves: Curves | None = None
    confusion: Confusion | None = None
    residuals: Residuals | None = None
    identity: ModelIdentity | None = None


class SubgroupRow(Record):
    group: str
    n: int
    small: bool
    ci_reliable: bool
    metrics: dict[str, dict[str, Estimate]]
    """Model name -> metric -> estimate on this subgroup's rows."""
    difference: dict[str, Estimate] | None
    """Paired update - base per metric on this subgroup."""
    positives: int | None = None
    prevalence: float | None = None
    mean_label: float | None = None


class FairnessGaps(Record):
    demographic_parity_difference: float | None
    equalized_odds_difference: float | None
    by_group: dict[str, dict[str, Number | None]]


class FairnessColumn(Record):
    included: list[str]
    excluded: dict[str, str]
    """Group -> why it was left out of the gaps."""
    base: FairnessGaps | None = None
    update: FairnessGaps | None = None


class Settings(Record):
    resamples: int
    seed: int
    confidence: float
    threshold_rule: str
    min_group_n: int
    group_cols: list[str]
    positive_label: str | None
    bootstrap: str
    ece_bins: int
    ece_strategy: str


class TaskSummary(Record):
    kind: str | None = None
    labels: list[str] | None
    positive_label: str | None
    label_counts: dict[str, int] | None
    n: int


class TestFile(Record):
    path: str
    sha256: str
    rows: int


class EvaluationData(Record):
    test: TestFile
    checks: dict[str, dict[str, Any]]
    """Model role -> the data checks of its training data against the test file, as ``selectune check`` reports them."""


class Evaluation(Record):
    """evaluation.json: everything a report needs about base and update on the test rows; no model re-run."""
    schema_: Literal["selectune-evaluation/1"] = Field(EVALUATION_SCHEMA, alias="schema")
    always_written = ("schema_",)
    settings: Settings
    definitions: dict[str, str]
    task: TaskSummary
    data: EvaluationData | None = None
    models: dict[str, ModelEvaluation]
    paired_differences: dict[str, Estimate] | None
    subgroups: dict[str, list[SubgroupRow]]
    fairness: dict[str, FairnessColumn]
    environment: dict[str, str] | None = None
    command: list[str] | None = None
    created: str | None = None
    seconds: float | None = None


# ---- gate.json -------------------------------------------------------------------------------------------

class GateRow(Record):
    """One criterion judged: ``selectune.evaluate.criteria.judge``'s row."""
    id: str
    criterion: str
    metric: str
    rule: str
    params: dict[str, Any]
    note: str | None
    passed: StrictBool  # a verdict is never coerced from "yes" or 1
    evidence: str
    values: dict[str, Any]
    """The numbers judged; their shape depends on the rule."""


class CriterionRecord(Record):
    id: str
    metric: str
    rule: str
    params: dict[str, Any]
    note: str | None


class CriteriaRecord(Record):
    path: str
    sha256: str
    text: str
    """The criteria file's full text, so a later edit of the file shows."""
    description: str | None
    criteria: list[CriterionRecord]


class ShortIdentity(Record):
    source: str
    kind: Literal["run", "delta", "merged"]
    delta_weights_sha256: str | None = None
    base_model: str | None = None
    base_fingerprint: str | None = None
    method: str | None = None
    weights_sha256: dict[str, str] | None = None

    @classmethod
    def of(cls, identity: ModelIdentity) -> ShortIdentity:
        return cls(**{k: getattr(identity, k) for k in cls.model_fields if k in identity.model_fields_set})


class GateRecord(Record):
    """gate.json: the verdict, one row per criterion, the criteria as written, and what was compared."""
    schema_: Literal["selectune-gate/1"] = Field(GATE_SCHEMA, alias="schema")
    always_written = ("schema_", "evaluation")
    passed: StrictBool
    rows: list[GateRow]
    criteria: CriteriaRecord
    evaluation: str = "evaluation.json"
    evaluation_sha256: str
    base: ShortIdentity
    update: ShortIdentity
    test: TestFile
    settings: Settings
    command: list[str]
    created: str


Parsed = TypeVar("Parsed", bound=BaseModel)


def parse_record(model: type[Parsed], data: Any, path: Path | str, error: type[Exception], fix: str) -> Parsed:
    """DATA (a file's parsed JSON) as MODEL, or ERROR naming the file, the first field that is wrong and FIX."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the top level"
        raise error(f"{path} is not a file this selectune reads ({err.error_count()} problem(s); first at {where}: "
                    f"{first['msg']}); {fix}") from None


SCHEMA_FILES = {"evaluation.schema.json": Evaluation, "gate.schema.json": GateRecord}


def json_schema(model: type[BaseModel]) -> str:
    return json.dumps(model.model_json_schema(), indent=2, sort_keys=True) + "\n"


def write_schemas(folder: Path = SCHEMA_DIR) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in SCHEMA_FILES.items():
        (folder / name).write_text(json_schema(model))
        written.append(folder / name)
    return written


if __name__ == "__main__":
    for path in write_schemas():
        print(f"wrote {path}")
