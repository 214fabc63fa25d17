"""``selectune report``: the update report of a run, as one self-contained HTML file and a Markdown version.

setup (read and validate every saved file) -> build the sections -> render both -> write atomically.
"""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from selectune.data import DataError
from selectune.fingerprint import file_sha256
from selectune.io import atomic_write_bytes, check_owned, staged_folder
from selectune.config import TrackingConfig
from selectune.refs import resolve_trained_model
from selectune.tracking import check as check_tracking, log_report
from selectune.tasks import ModelLoadError
from selectune.report.change_record import hf_metadata, model_card_sections, pccp_section
from selectune.report.collect import RunEvidence, read_run
from selectune.report.document import FILL_MARK, Code, Fields, Notice, Paragraph, Section, Table, figures, to_html, to_markdown
from selectune.report.evaluation_sections import evaluation_sections, fmt, headline
from selectune.report.gate_files import GateEvidence, read_gate
from selectune.report.privacy import redact
from selectune.report.run_sections import base_model_name, change_section, data_section, identity_section

REPORT_HTML, REPORT_MD, FIGURES = "report.html", "report.md", "figures"
REPORT_OWNER = "selectune report"


def summary_section(update: RunEvidence, base: RunEvidence | None, gate: GateEvidence | None, rows: list[dict]) -> Section:
    section = Section("Summary")
    if gate is None:
        section.add(Notice("missing", "This update has not been through the gate: the base-vs-update evidence and the acceptance "
                                      "criteria are missing from this report (see Base vs update)."))
    else:
        passed = gate.passed
        section.add(Notice("pass" if passed else "fail", f"Gate {'PASSED' if passed else 'FAILED'} "
                                                         f"({sum(r.passed for r in gate.rows)} of {len(gate.rows)} criteria met)."))
    m = update.metrics
    items = [("update", f"{m.get('method')} on {base_model_name(update)}: {m.get('trainable_parameters', 0):,} parameters "
                        f"({m.get('trainable_percent', 0):.3f}%) trained, delta {update.delta_bytes:,} bytes"),
             ("model in use (base)", f"{base.metrics.get('method')} run {redact(base.path.name)}" if base else "not given")]
    judged = {r.metric for r in gate.rows} if gate else set()
    for h in sorted(rows, key=lambda h: h["metric"] not in judged)[:4]:  # the metrics the gate judged first
        value = f"update {fmt(h['update'])}"
        if h.get("base"):
            value += f"; base {fmt(h['base'])}; difference {fmt(h['difference'], signed=True)}"
        items.append((h["metric"], value))
    section.add(Fields(items))
    return section


def answers_section(gate: GateEvidence | None) -> Section | None:
    """Base and update answering the same first test prompts (greedy), side by side; every text through ``redact``."""
    if gate is None or gate.answers is None:
        return None
    base, update = gate.answers["base"], gate.answers["update"]
    rows = [[i + 1, redact(u.get("prompt")), redact(b.get("answer")), redact(u.get("answer"))]
            for i, (b, u) in enumerate(zip(base, update))]
    return Section("Answers to fixed prompts").add(
        Paragraph(f"The first {len(rows)} prompts of the test file, answered greedily by the model in use (base) and the update "
                  "(as `selectune gate` saved them in answers.json). Identifier-like text (e-mail, phone, record number, date, URL) "
                  "is replaced by its type."),
        Table(["#", "prompt", "base", "update"], rows, "Greedy answers; the same prompts for both models."))


def gate_identity(gate: GateEvidence) -> Section:
    """How the evidence was produced: the gate's settings, command and library versions."""
    settings, evaluation = gate.evaluation.settings, gate.evaluation
    argv = list(evaluation.command or gate.record.command or [])
    if argv:
        argv[0] = Path(argv[0]).name
    section = Section("Evaluation (the gate)")
    section.add(Fields([("bootstrap", settings.bootstrap), ("bootstrap seed", settings.seed),
                        ("confidence", settings.confidence), ("threshold rule", settings.threshold_rule),
                        ("positive label", redact(settings.positive_label)),
                        ("group columns", redact(", ".join(settings.group_cols) or "none")),
                        ("minimum group n", settings.min_group_n),
                        *((f"version: {k}", v) for k, v in sorted((evaluation.environment or {}).items()))]))
    if argv:
        section.add(Code(redact(shlex.join(argv))))
    return section


def provenance_section(paths: dict[str, Path]) -> Section:
    """The files this report was built from, with their sha256: the report can be checked against them."""
    rows = [[label, redact(f"{p.parent.name}/{p.name}"), file_sha256(p)] for label, p in paths.items() if p.is_file()]
    return Section("Sources of this report").add(
        Table(["what", "file", "sha256"], rows, "Everything above comes from these files; no model was run to make this report."))


def build(update: RunEvidence, base: RunEvidence | None, gate: GateEvidence | None) -> tuple[str, list[Section], str]:
    """(title, sections, Hugging Face front matter)."""
    evaluation = gate.evaluation if gate else None
    rows = headline(evaluation, update.metrics)
    runs = {**({"base (in use)": base} if base else {}), "update": update}
    identity = identity_section(runs)
    if gate and base is None:
        # e.g. a merged model folder as the base (`selectune update`): its identity is what the gate recorded
        recorded = gate.record.base
        weights = recorded.weights_sha256 or recorded.delta_weights_sha256
        identity.add(Paragraph("Model in use (base), as the gate recorded it (no training-run folder for it):"),
                     Fields([("kind", recorded.kind), ("folder", redact(Path(recorded.source).name)),
                             ("base model", redact(recorded.base_model)), ("base fingerprint", recorded.base_fingerprint),
                             ("method", recorded.method),
                             ("weights sha256", ", ".join(f"{k} {v}" for k, v in weights.items()) if isinstance(weights, dict) else weights)]))
    if gate:
        identity.subsections.append(gate_identity(gate))
    sections = [summary_section(update, base, gate, rows), identity, change_section(update, base),
                data_section(update, base, gate.data_rows if gate else None),
                *evaluation_sections(evaluation, gate.record if gate else None, update.metrics),
                *filter(None, [answers_section(gate)]), pccp_section(update, base, gate.record if gate else None, rows), model_card_sections(update, evaluation, rows)]
    sources = {f"{name} {file}": run.path / file for name, run in runs.items()
               for file in ("run_config.json", "metrics.json", "checks.json", "delta/delta_config.json")}
    if gate:
        sources.update({f"gate {p.name}": p for p in gate.files})
    sections.append(provenance_section(sources))
    title = f"Update report: {update.metrics.get('method')} update of {base_model_name(update)}"
    return title, sections, hf_metadata(update, rows, model_name=redact(update.path.name))


def run_folder(given: str, option: str) -> str:
    """The training-run folder a report reads: GIVEN itself for a run folder (or anything that is no trained model,
    which ``read_run`` then refuses by name); for a delta/, merged folder or registry reference, the run it came from."""
    try:
        trained = resolve_trained_model(given, option=option)
    except ModelLoadError:
        return given
    if trained.form == "run":
        return given
    if trained.run_dir is None:
        raise DataError(f"{option} {given} is a {trained.form} model whose training run is unknown; a report is built from the "
                        "training run's records (run_config.json, metrics.json): give the `selectune train --out` folder.")
    return str(trained.run_dir)


def report(run: str, *, out: str, gate: str | None = None, base: str | None = None, overwrite: bool = False,
           tracking: TrackingConfig = TrackingConfig()) -> dict[str, Any]:
    """Write the update report of RUN (report.html, report.md, figures/) to OUT, built only from saved files.

    run: the update: its `selectune train --out` folder, or its delta/ folder, a `selectune merge` folder of it, or its registry reference NAME@VERSION (REGISTRY_DIR/NAME@VERSION), which name that run
    out: report folder; refused if it exists unless --overwrite
    gate: folder written by `selectune gate --out` for this update (base vs update evidence and the gate table)
    base: the model in use, in the same forms as RUN (default: the run the gate recorded)
    overwrite: replace OUT if it exists
    """
    target = Path(out)
    if target.exists() and not overwrite:
        raise FileExistsError(f"output directory {out} already exists; choose another --out or pass --overwrite")
    check_owned(target, REPORT_OWNER)  # --overwrite replaces only an earlier report, never e.g. the run folder
    check_tracking(tracking)  # with --mlflow-uri: mlflow installed and its server answering, before anything is written
    update = read_run(run_folder(run, "run"), "update run")
    gate_evidence = read_gate(gate, update) if gate else None
    base_path = run_folder(base, "base") if base else (gate_evidence.base_run if gate_evidence else None)
    base_run = read_run(base_path, "base run") if base_path else None
    judged = gate_evidence.record.base.delta_weights_sha256 if gate_evidence else None
    if base_run and judged and judged != base_run.delta.get("weights_sha256"):
        raise DataError(f"the gate in {gate} compared against a base whose delta sha256 is {judged}, but --base {base} holds "
                        f"{base_run.delta.get('weights_sha256')}; leave --base out or give the base the gate judged.")
    title, sections, front_matter = build(update, base_run, gate_evidence)
    subtitle = ("Generated by `selectune report` from the run's saved files only. Fields marked "
                f"[{FILL_MARK}] must be completed by a person before this record is used.")
    html_text = to_html(title, subtitle, sections)
    markdown = to_markdown(title, subtitle, sections, front_matter)

    # Everything goes into a partial folder first, renamed into place at the end: never a half-written report.
    with staged_folder(target, owner=REPORT_OWNER) as partial:
        atomic_write_bytes(partial / REPORT_HTML, html_text.encode("utf-8"))
        atomic_write_bytes(partial / REPORT_MD, markdown.encode("utf-8"))
        for name, png in figures(sections).items():
            atomic_write_bytes(partial / FIGURES / f"{name}.png", png)
    fill_ins = markdown.count(f"[{FILL_MARK}]")
    verdict = None if gate_evidence is None else ("passed" if gate_evidence.passed else "failed")
    run_id = log_report(tracking, target, update.path, verdict)  # after the report is complete: a failure leaves it whole
    return {"html": str(target / REPORT_HTML), "markdown": str(target / REPORT_MD), "figures": len(figures(sections)),
            "gate": verdict, "fields_to_fill": fill_ins, **({"mlflow_run_id": run_id} if run_id else {})}


def render(result: dict[str, Any]) -> str:
    gate = {"passed": "gate PASSED", "failed": "gate FAILED", None: "no gate evidence (pass --gate GATE_DIR)"}[result["gate"]]
    return (f"wrote {result['html']} (self-contained) and {result['markdown']} with {result['figures']} figures; {gate}; "
            f"{result['fields_to_fill']} fields marked [{FILL_MARK}] for a person to complete")
