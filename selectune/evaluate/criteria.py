"""Acceptance criteria for an update, written *before* evaluation, and judging them against the evidence.

A criteria file (YAML)::

    description: Drug-review sentiment update, agreed 2024-05-01   # optional
    criteria:
      - id: auroc-non-inferior          # optional; default "<metric> <rule>"
        metric: auroc
        rule: non_inferior              # paired CI of update - base: lower bound >= -margin
        margin: 0.02
      - metric: macro_f1
        rule: max_subgroup_drop         # no subgroup may lose more than max_drop vs base (same subgroup)
        max_drop: 0.05
      - {metric: ece, rule: max, value: 0.10}
      - {metric: sensitivity, rule: min, value: 0.70}
      - {metric: equalized_odds_difference, rule: max, value: 0.25}

Rules (``update`` is the candidate, ``base`` the model in use; "worse" follows the metric's direction):

- ``min`` / ``max``: the update's value must be >= / <= ``value``; ``use: ci_low`` (min) or ``use: ci_high``
  (max) judges the CI bound instead of the point. Fairness gaps take ``max`` per group column.
- ``non_inferior``: the paired CI of update - base must exclude a loss larger than ``margin``.
- ``superior``: the paired CI must show a gain larger than ``margin`` (default 0).
- ``max_worsening``: the update may be worse than base by at most ``value`` (point estimates).
- ``max_subgroup_drop``: in every subgroup of every group column (or ``group_col``), the update may be worse
  than base on that subgroup by at most ``max_drop``; ``use: ci`` judges the paired CI's worse bound;
  subgroups below ``--min-group-n`` are listed but not judged unless ``include_small_groups: true``.

The file is validated strictly before any model runs: unknown keys, rules or metrics, a metric the task
does not have, or a missing parameter stop the gate with the valid choices listed, and nothing is written.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from selectune.evaluate.metrics import CLASSIFICATION_METRICS, FAIRNESS_METRICS, HIGHER_IS_BETTER, LOSS_METRICS, REGRESSION_METRICS

HEADLINE = set(CLASSIFICATION_METRICS) | set(REGRESSION_METRICS) | set(LOSS_METRICS)
COMMON_KEYS = ("id", "metric", "rule", "note")
TOP_KEYS = ("criteria", "description", "version")
NON_NEGATIVE = ("margin", "max_drop")  # numbers that must be >= 0 (a min/max ``value`` may be negative, e.g. r2)


class CriteriaError(ValueError):
    """The criteria file is not valid; the message names the entry, the problem and the valid choices."""


@dataclass
class Criterion:
    id: str
    metric: str
    rule: str  # a key of RULES
    params: dict[str, Any] = field(default_factory=dict)
    note: str | None = None

    def describe(self) -> str:
        p = self.params
        text = RULES[self.rule].describe(self.metric, p)
        if p.get("use") not in (None, "point"):
            text += f" (judged on {p['use']})"
        if p.get("group_col"):
            text += f" [{p['group_col']}]"
        return text


@dataclass
class CriteriaFile:
    path: str
    sha256: str
    text: str
    description: str | None
    criteria: list[Criterion]

    def record(self) -> dict[str, Any]:
        return {"path": str(Path(self.path).resolve()), "sha256": self.sha256, "text": self.text, "description": self.description,
                "criteria": [{"id": c.id, "metric": c.metric, "rule": c.rule, "params": c.params, "note": c.note} for c in self.criteria]}


class _StrictLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice (plain YAML keeps the last one, silently)."""


def _no_duplicates(loader, node, deep=False):
    keys = [loader.construct_object(k, deep=deep) for k, _ in node.value]
    for key in keys:
        if keys.count(key) > 1:
            raise CriteriaError(f"key {key!r} appears twice in one mapping (line {node.start_mark.line + 1}); keep one")
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def _number(where: str, key: str, value: Any, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CriteriaError(f"{where}: {key} must be a number, got {value!r}")
    if minimum is not None and value < minimum:
        raise CriteriaError(f"{where}: {key} must be >= {minimum}, got {value!r}")
    return float(value)


def _parse_entry(i: int, entry: Any, path: str) -> Criterion:
    where = f"{path}: criteria[{i}]"
    if not isinstance(entry, dict):
        raise CriteriaError(f"{where} must be a mapping like {{metric: auroc, rule: non_inferior, margin: 0.02}}, got {entry!r}")
    for key in ("metric", "rule"):
        if key not in entry:
            raise CriteriaError(f"{where} has no {key!r}; every criterion names a metric and a rule")
    metric, rule = entry["metric"], entry["rule"]
    valid_metrics = sorted(HEADLINE | set(FAIRNESS_METRICS))
    if metric not in valid_metrics:
        raise CriteriaError(f"{where}: unknown metric {metric!r}; valid metrics: {', '.join(valid_metrics)}")
    if rule not in RULES:
        raise CriteriaError(f"{where}: unknown rule {rule!r}; valid rules: {', '.join(RULES)}")
    if metric in FAIRNESS_METRICS and not RULES[rule].judges_fairness_gaps:
        fairness_rules = " or ".join(name for name, r in RULES.items() if r.judges_fairness_gaps)
        raise CriteriaError(f"{where}: fairness metric {metric} takes the rule {fairness_rules}, not {rule!r}")
    params = RULES[rule].parse(where, entry, metric)
    note = entry.get("note")
    ident = entry.get("id", f"{metric} {rule}")
    if not isinstance(ident, str) or not ident.strip():
        raise CriteriaError(f"{where}: id must be a non-empty string, got {ident!r}")
    return Criterion(id=ident, metric=metric, rule=rule, params=params, note=None if note is None else str(note))


def load_criteria(path: str) -> CriteriaFile:
    """Read and strictly validate a criteria file; its sha256 and text are kept for the record."""
    file = Path(path)
    if not file.is_file():
        raise CriteriaError(f"criteria file not found: {path}. Write the acceptance criteria (YAML) before evaluating; "
                            "see `selectune gate --help` or the README for an example.")
    data = file.read_bytes()
    try:
        text = data.decode("utf-8")
        content = yaml.load(text, Loader=_StrictLoader)
    except UnicodeDecodeError:
        raise CriteriaError(f"{path} is not UTF-8 text; save it as UTF-8 YAML.") from None
    except CriteriaError as err:
        raise CriteriaError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        raise CriteriaError(f"{path} is not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(content, dict) or "criteria" not in content:
        raise CriteriaError(f"{path} must be a YAML mapping with a 'criteria:' list (e.g. criteria: [{{metric: auroc, rule: "
                            "non_inferior, margin: 0.02}]); see the README")
    unknown = sorted(set(content) - set(TOP_KEYS))
    if unknown:
        raise CriteriaError(f"{path}: unknown top-level key(s) {unknown}; valid keys: {', '.join(TOP_KEYS)}")
    if content.get("version", 1) != 1:
        raise CriteriaError(f"{path}: version {content['version']!r} is not supported; this selectune reads version 1")
    entries = content["criteria"]
    if not isinstance(entries, list) or not entries:
        raise CriteriaError(f"{path}: 'criteria' must be a non-empty list of criteria")
    criteria = [_parse_entry(i, e, path) for i, e in enumerate(entries)]
    ids = [c.id for c in criteria]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise CriteriaError(f"{path}: criterion id(s) {dupes} are used twice; give each criterion its own id")
    description = content.get("description")
    return CriteriaFile(path=path, sha256="sha256:" + hashlib.sha256(data).hexdigest(), text=text,
                        description=None if description is None else str(description), criteria=criteria)


def check_applicable(criteria: CriteriaFile, *, classification: bool, group_cols: list[str], loss_metrics: list[str] = ()) -> None:
    """Refuse, before any model runs, criteria that this task or these --group-cols cannot judge. ``loss_metrics``: what the
    task derives from its loss (a causal LM's perplexity)."""
    valid = set(CLASSIFICATION_METRICS) | set(FAIRNESS_METRICS) if classification else set(REGRESSION_METRICS)
    valid |= set(loss_metrics)
    kind = "classification" if classification else "regression"
    for c in criteria.criteria:
        if c.metric not in valid:
            raise CriteriaError(f"{criteria.path}: criterion {c.id!r} uses {c.metric}, which a {kind} model does not have; "
                                f"valid metrics for {kind}: {', '.join(sorted(valid))}")
        needs_groups = RULES[c.rule].judges_subgroups or c.metric in FAIRNESS_METRICS
        if needs_groups and not group_cols:
            raise CriteriaError(f"{criteria.path}: criterion {c.id!r} judges subgroups, but no --group-cols were given; "
                                "pass --group-cols COLUMN[,COLUMN] (columns of the test file)")
        column = c.params.get("group_col")
        if column is not None and column not in group_cols:
            raise CriteriaError(f"{criteria.path}: criterion {c.id!r} names group_col {column!r}, which is not among --group-cols {group_cols}; "
                                "add it to --group-cols")


# ---- judging ------------------------------------------------------------------------------------------

def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "undefined"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _ci(est: dict, signed: bool = False) -> str:
    if est.get("ci_low") is None:
        return "no CI"
    return f"CI {_fmt(est['ci_low'], signed)} to {_fmt(est['ci_high'], signed)}"


def _worse_by(higher: bool, diff: dict, use: str) -> float | None:
    """How much worse the update is (positive = worse) from a paired update - base difference."""
    if use == "ci":
        bound = diff.get("ci_low") if higher else diff.get("ci_high")
    else:
        bound = diff.get("value")
    if bound is None:
        return None
    return -bound if higher else bound


def judge(criterion: Criterion, evaluation: dict, confidence: float) -> dict[str, Any]:
    """One gate row: passed (a criterion that cannot be evaluated fails), human evidence, and the numbers.

    EVALUATION is evaluation.json's content (``selectune.evaluate.records.Evaluation`` dumped to a dict).
    """
    c = criterion
    passed, evidence, values = RULES[c.rule].judge(c, evaluation, f"{confidence:.0%}")
    return {"id": c.id, "criterion": c.describe(), "metric": c.metric, "rule": c.rule, "params": c.params, "note": c.note,
            "passed": bool(passed), "evidence": evidence, "values": values}


# ---- the rules: one class per rule name ----------------------------------------------------------------

Judgement = tuple[bool, str, dict[str, Any]]  # (passed, evidence text, the numbers judged)


class Rule:
    """One kind of criterion: which parameters it takes (parse), its text (describe) and its verdict (judge)."""
    name: ClassVar[str]
    required: ClassVar[tuple[str, ...]] = ()
    optional: ClassVar[dict[str, Any]] = {}  # parameter -> default
    uses: ClassVar[tuple[str, ...]] = ("point",)  # what ``use:`` may name
    judges_fairness_gaps: ClassVar[bool] = False  # a fairness metric (a gap per group column) may take this rule
    judges_subgroups: ClassVar[bool] = False  # needs --group-cols whatever the metric

    def allowed_keys(self, metric: str) -> set[str]:
        return set(COMMON_KEYS) | set(self.required) | set(self.optional)

    def parse(self, where: str, entry: dict[str, Any], metric: str) -> dict[str, Any]:
        """The entry's parameters with defaults filled in; CriteriaError names any key or value this rule refuses."""
        allowed = self.allowed_keys(metric)
        unknown = sorted(set(entry) - allowed)
        if unknown:
            raise CriteriaError(f"{where}: unknown key(s) {unknown} for rule {self.name!r}; valid keys: {', '.join(sorted(allowed))}")
        missing = [k for k in self.required if k not in entry]
        if missing:
            raise CriteriaError(f"{where}: rule {self.name!r} needs {', '.join(missing)} (e.g. {missing[0]}: 0.05)")
        params = {k: v for k, v in self.optional.items() if k in allowed}
        params.update({k: entry[k] for k in entry if k in set(self.required) | set(self.optional)})
        for key in ("value", "margin", "max_drop"):
            if key in params:
                params[key] = _number(where, key, params[key], minimum=0.0 if key in NON_NEGATIVE else None)
        if "use" in params and params["use"] not in self.uses:
            raise CriteriaError(f"{where}: use must be one of {', '.join(self.uses)} for rule {self.name!r}, got {params['use']!r}")
        if not isinstance(params.get("include_small_groups", False), bool):
            raise CriteriaError(f"{where}: include_small_groups must be true or false")
        if params.get("group_col") is not None and not isinstance(params["group_col"], str):
            raise CriteriaError(f"{where}: group_col must be a column name, got {params['group_col']!r}")
        return params

    def describe(self, metric: str, params: dict[str, Any]) -> str:
        raise NotImplementedError

    def judge(self, c: Criterion, evaluation: dict, level: str) -> Judgement:
        raise NotImplementedError


class FairnessGapRule(Rule):
    """A rule that, on a fairness metric, judges the gap of each group column (headline metrics: all test rows)."""
    judges_fairness_gaps = True

    def allowed_keys(self, metric: str) -> set[str]:
        allowed = super().allowed_keys(metric)
        if metric not in FAIRNESS_METRICS:
            allowed.discard("group_col")  # a headline metric is judged on all test rows
        return allowed

    def gap_judged(self, new: float | None, old: float | None) -> float | None:
        """The amount compared with ``value``: the update's gap (max) or its growth over base (max_worsening)."""
        raise NotImplementedError

    def judge_gaps(self, c: Criterion, evaluation: dict) -> Judgement:
        p = c.params
        columns = [p["group_col"]] if p.get("group_col") else list(evaluation["fairness"])
        failures, parts, values = [], [], {}
        for column in columns:
            gaps = evaluation["fairness"][column]
            new, old = gaps["update"][c.metric], gaps["base"][c.metric]
            amount = self.gap_judged(new, old)
            ok = amount is not None and amount <= p["value"]
            values[column] = {"update": new, "base": old, "judged": amount, "passed": ok}
            part = f"{column}: update {_fmt(new)} (base {_fmt(old)})"
            if new is None:
                reasons = ", ".join(f"{g}: {why}" for g, why in gaps["excluded"].items())
                part += f", fewer than 2 groups with n >= min-group-n and both outcomes (left out: {reasons or 'none'})"
            parts.append(part)
            if not ok:
                failures.append(column)
        evidence = "; ".join(parts) + (f"; fails in {', '.join(failures)}" if failures else "")
        return not failures, evidence, values


class BoundRule(FairnessGapRule):
    """``min`` / ``max``: the update's value (or its CI bound, with ``use``) against a fixed ``value``."""
    required = ("value",)
    sign: ClassVar[str]

    def describe(self, metric: str, params: dict[str, Any]) -> str:
        return f"{metric} {self.sign} {params.get('value')}"

    def judge(self, c: Criterion, evaluation: dict, level: str) -> Judgement:
        if c.metric in FAIRNESS_METRICS:
            return self.judge_gaps(c, evaluation)
        p, models = c.params, evaluation["models"]
        est = models["update"]["metrics"][c.metric]
        judged = est["value"] if p["use"] == "point" else est[p["use"]]
        passed = judged is not None and (judged >= p["value"] if self.sign == ">=" else judged <= p["value"])
        base = models.get("base", {}).get("metrics", {}).get(c.metric, {}).get("value")
        evidence = (f"update {_fmt(est['value'])} ({level} {_ci(est)}); {p['use'].replace('_', ' ')} {_fmt(judged)} "
                    f"{self.sign if passed else 'not ' + self.sign} {p['value']:g}; base {_fmt(base)}")
        return passed, evidence, {"update": est, "judged": judged}


class Min(BoundRule):
    name, sign = "min", ">="
    optional = {"use": "point"}
    uses = ("point", "ci_low")
    judges_fairness_gaps = False


class Max(BoundRule):
    name, sign = "max", "<="
    optional = {"use": "point", "group_col": None}
    uses = ("point", "ci_high")

    def gap_judged(self, new, old):
        return new


def _paired_values(c: Criterion, evaluation: dict, difference: dict) -> dict[str, Any]:
    models = evaluation["models"]
    return {"difference": difference, "base": models["base"]["metrics"][c.metric],
            "update": models["update"]["metrics"][c.metric]}


class MaxWorsening(FairnessGapRule):
    """The update may be worse than base by at most ``value`` (point estimates)."""
    name = "max_worsening"
    required = ("value",)
    optional = {"group_col": None}

    def describe(self, metric: str, params: dict[str, Any]) -> str:
        return f"{metric} worse than base by <= {params.get('value')}"

    def gap_judged(self, new, old):
        return None if new is None or old is None else new - old

    def judge(self, c: Criterion, evaluation: dict, level: str) -> Judgement:
        if c.metric in FAIRNESS_METRICS:
            return self.judge_gaps(c, evaluation)
        d = (evaluation.get("paired_differences") or {})[c.metric]
        worse = _worse_by(HIGHER_IS_BETTER[c.metric], d, "point")
        passed = worse is not None and worse <= c.params["value"]
        evidence = (f"update - base {_fmt(d['value'], True)} ({level} {_ci(d, True)}); worse by {_fmt(worse)} "
                    f"(allowed {c.params['value']:g})")
        return passed, evidence, _paired_values(c, evaluation, d)


class PairedCIRule(Rule):
    """``non_inferior`` / ``superior``: the paired CI of update - base, on its bad side, against the margin."""
    strict: ClassVar[bool]  # superior needs the bound strictly past the margin

    def judge(self, c: Criterion, evaluation: dict, level: str) -> Judgement:
        higher = HIGHER_IS_BETTER[c.metric]
        d = (evaluation.get("paired_differences") or {})[c.metric]
        # Non-inferior: the worst plausible change (CI bound on the bad side) is within the margin.
        bound = d["ci_low"] if higher else d["ci_high"]
        limit = self.limit(c.params["margin"])
        target = limit if higher else -limit
        if bound is None:
            passed = False
        elif higher:
            passed = bound > target if self.strict else bound >= target
        else:
            passed = bound < target if self.strict else bound <= target
        side = "lower" if higher else "upper"
        relation = (">" if self.strict else ">=") if higher else ("<" if self.strict else "<=")
        evidence = (f"update - base {_fmt(d['value'], True)} (paired {level} {_ci(d, True)}); {side} bound "
                    f"{_fmt(bound, True)} {relation if passed else 'not ' + relation} {target:+.3f}")
        return passed, evidence, _paired_values(c, evaluation, d)

    def limit(self, margin: float) -> float:
        raise NotImplementedError


class NonInferior(PairedCIRule):
    name, strict = "non_inferior", False
    required = ("margin",)

    def describe(self, metric: str, params: dict[str, Any]) -> str:
        return f"{metric} non-inferior to base, margin {params.get('margin')}"

    def limit(self, margin: float) -> float:
        return -margin  # a loss of up to margin is allowed


class Superior(PairedCIRule):
    name, strict = "superior", True
    optional = {"margin": 0.0}

    def describe(self, metric: str, params: dict[str, Any]) -> str:
        return f"{metric} better than base by > {params.get('margin')}"

    def limit(self, margin: float) -> float:
        return margin  # a gain of more than margin is needed


class MaxSubgroupDrop(Rule):
    """In every subgroup judged, the update may be worse than base on that subgroup by at most ``max_drop``."""
    name = "max_subgroup_drop"
    required = ("max_drop",)
    optional = {"group_col": None, "use": "point", "include_small_groups": False}
    uses = ("point", "ci")
    judges_subgroups = True

    def describe(self, metric: str, params: dict[str, Any]) -> str:
        return f"{metric} drop vs base in any subgroup <= {params.get('max_drop')}"

    def judge(self, c: Criterion, evaluation: dict, level: str) -> Judgement:
        p, higher = c.params, HIGHER_IS_BETTER[c.metric]
        columns = [p["group_col"]] if p.get("group_col") else list(evaluation["subgroups"])
        judged, skipped, undefined = [], [], []
        for column in columns:
            for row in evaluation["subgroups"][column]:
                name = f"{column}={row['group']}"
                if row["small"] and not p["include_small_groups"]:
                    skipped.append(f"{name} (n={row['n']})")
                    continue
                worse = _worse_by(higher, row["difference"][c.metric], p["use"])
                if worse is None:
                    undefined.append(f"{name} (n={row['n']})")
                    continue
                judged.append({"column": column, "group": row["group"], "n": row["n"], "worse_by": worse,
                               "base": row["metrics"]["base"][c.metric]["value"], "update": row["metrics"]["update"][c.metric]["value"],
                               "passed": worse <= p["max_drop"]})
        failing = [j for j in judged if not j["passed"]]
        evidence = self.evidence(c, judged, failing) if judged else "no subgroup could be judged"
        if skipped:
            evidence += f"; not judged (n < min-group-n): {', '.join(skipped)}"
        if undefined:
            evidence += f"; {c.metric} undefined in {', '.join(undefined)}"
        return bool(judged) and not failing, evidence, {"judged": judged, "not_judged_small": skipped, "undefined": undefined}

    @staticmethod
    def evidence(c: Criterion, judged: list[dict], failing: list[dict]) -> str:
        worst = max(judged, key=lambda j: j["worse_by"])
        text = (f"worst {worst['column']}={worst['group']} (n={worst['n']}): {_fmt(worst['base'])} -> {_fmt(worst['update'])}, "
                f"{'drop' if c.params['use'] == 'point' else 'paired-CI worst-case drop'} {_fmt(worst['worse_by'])} "
                f"(allowed {c.params['max_drop']:g})")
        if failing:
            text += f"; {len(failing)} of {len(judged)} subgroups exceed: " + ", ".join(f"{j['column']}={j['group']}" for j in failing)
        return text


# The one list of rules: a criterion's ``rule:`` names one of these (file order is the order in error messages).
RULES: dict[str, Rule] = {rule.name: rule for rule in (Min(), Max(), NonInferior(), Superior(), MaxWorsening(), MaxSubgroupDrop())}
