"""Read what ``selectune gate --out`` saved: the gate decision (gate.json) and the evaluation behind it."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selectune.data import DataError
from selectune.evaluate.records import Evaluation, GateRecord, GateRow, parse_record
from selectune.report.collect import RunEvidence, read_json
from selectune.report.privacy import redact

GATE_FILE, EVALUATION_FILE, ANSWERS_FILE = "gate.json", "evaluation.json", "answers.json"
REWRITE = "write it again with `selectune gate`."


@dataclass
class GateEvidence:
    path: Path
    record: GateRecord  # gate.json
    evaluation: Evaluation  # evaluation.json
    files: list[Path]
    answers: dict[str, Any] | None = None  # answers.json: base and update answering the first test prompts (generative tasks)

    @property
    def rows(self) -> list[GateRow]:
        return self.record.rows

    @property
    def passed(self) -> bool:
        return self.record.passed

    @property
    def base_run(self) -> str | None:
        """The base's training-run folder, as the gate recorded it (a run, or a delta inside a run)."""
        base = self.record.base
        source = Path(base.source)
        if base.kind == "run":
            return str(source)
        if base.kind == "delta" and (source.parent / "run_config.json").is_file():
            return str(source.parent)
        return None

    @property
    def data_rows(self) -> list[list[Any]]:
        """(split, file, sha256, rows) of the data the gate evaluated on."""
        test = self.record.test
        return [["test", redact(Path(test.path).name), test.sha256, test.rows]]


def read_gate(path: str | Path, update: RunEvidence) -> GateEvidence:
    folder = Path(path)
    missing = [name for name in (GATE_FILE, EVALUATION_FILE) if not (folder / name).is_file()]
    if not folder.is_dir() or missing:
        raise DataError(f"gate folder {path} {'does not exist' if not folder.is_dir() else 'lacks ' + ', '.join(missing)}; "
                        "give the folder written by `selectune gate --out` for this update.")
    record = parse_record(GateRecord, read_json(folder / GATE_FILE, "selectune gate"), folder / GATE_FILE, DataError, REWRITE)
    evaluation = read_json(folder / EVALUATION_FILE, "selectune gate")
    if not isinstance(evaluation, dict) or "models" not in evaluation or "update" not in evaluation.get("models", {}):
        raise DataError(f"{folder / EVALUATION_FILE} holds no update model's metrics; write it again with `selectune gate`.")
    evaluation_bytes = (folder / EVALUATION_FILE).read_bytes()
    if record.evaluation_sha256 != "sha256:" + hashlib.sha256(evaluation_bytes).hexdigest():
        raise DataError(f"{folder / EVALUATION_FILE} is not the file the gate judged (its sha256 differs from the one in "
                        f"{GATE_FILE}): the evidence was changed afterwards. Run `selectune gate` again.")
    evaluation = parse_record(Evaluation, evaluation, folder / EVALUATION_FILE, DataError, REWRITE)
    recorded = record.update.delta_weights_sha256
    if recorded and recorded != update.delta.get("weights_sha256"):
        raise DataError(f"gate folder {path} judged an update whose delta sha256 is {recorded}, but {update.path}'s delta is "
                        f"{update.delta.get('weights_sha256')}; give the gate folder of this update or run `selectune gate` on it.")
    files = [folder / name for name in (GATE_FILE, EVALUATION_FILE, "criteria.yaml", ANSWERS_FILE)]
    answers = read_json(folder / ANSWERS_FILE, "selectune gate") if (folder / ANSWERS_FILE).is_file() else None
    if answers is not None and not (isinstance(answers, dict) and all(isinstance(answers.get(r), list) for r in ("base", "update"))):
        raise DataError(f"{folder / ANSWERS_FILE} lacks the base and update answers; {REWRITE}")
    return GateEvidence(folder, record, evaluation, [f for f in files if f.is_file()], answers)
