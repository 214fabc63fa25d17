"""Report sections built from training runs alone: identity, the change, the data."""
from __future__ import annotations

import shlex
from pathlib import Path

from selectune.report.collect import RunEvidence
from selectune.report.document import Code, Fields, Figure, Notice, Paragraph, Section, Table
from selectune.report.plots import history_figure
from selectune.report.privacy import redact

# Bundled short names -> the Hugging Face Hub id of the weights they contain (for `base_model`).
HUB_IDS = {name: "sentence-transformers/all-MiniLM-L6-v2" for name in ("minilm", "minilm-mean", "minilm-cls")}
HYPERPARAMETERS = ("lr", "new_lr", "epochs", "batch_size", "grad_accum", "weight_decay", "warmup_ratio", "class_weight",
                   "metric", "patience", "keep_best", "mixed_precision", "seed")


def short_model_name(model: str) -> str | None:
    """A hub id where known; a local folder by its name (selectune's own RUN/model folders as RUN/model);
    None for a new MLP (no base)."""
    if model in HUB_IDS or model == "mlp":
        return HUB_IDS.get(model)
    parts = Path(model).parts
    return redact("/".join(parts[-2:]) if parts and parts[-1] == "model" else (parts[-1] if parts else model))


def base_model_name(run: RunEvidence) -> str:
    """What the delta applies to, for people: short name, or what a new MLP is."""
    return short_model_name(str(run.config.get("model", ""))) or "new tabular MLP (trained from scratch)"


def command_line(run: RunEvidence) -> str:
    argv = list(run.config.get("argv") or [])
    if argv:
        argv[0] = Path(argv[0]).name  # the entry point's name, not the user's install path
    return redact(shlex.join(argv)) if argv else redact(run.config.get("command", ""))


def columns(runs: dict[str, RunEvidence]) -> list[str]:
    return ["", *runs]


def identity_section(runs: dict[str, RunEvidence]) -> Section:
    """runs: "base (in use)"/"update" -> evidence; one column per run."""
    section = Section("Identity")
    rows = [
        ("run folder", lambda r: redact(r.path.name)),
        ("base model", base_model_name),
        ("base model path", lambda r: redact(r.config.get("model_path"))),
        ("base fingerprint", lambda r: r.selection.get("base_fingerprint")),
        ("delta sha256 (recorded)", lambda r: r.delta.get("weights_sha256")),
        ("delta file check", lambda r: "matches the recorded sha256" if r.delta_intact else f"MISMATCH: file hashes to {r.delta_sha256}"),
        ("delta size", lambda r: f"{r.delta_bytes:,} bytes"),
        ("delta format", lambda r: f"{r.delta.get('format')} v{r.delta.get('format_version')}"),
        ("model class", lambda r: r.delta.get("metadata", {}).get("model_class")),
        ("seed", lambda r: r.config.get("train_config", {}).get("seed")),
        ("processes", lambda r: r.config.get("num_processes")),
    ]
    versions = sorted({k for r in runs.values() for k in r.config.get("environment", {})})
    rows += [(f"version: {k}", lambda r, k=k: r.config.get("environment", {}).get(k)) for k in versions]
    section.add(Table(columns(runs), [[label, *(get(r) for r in runs.values())] for label, get in rows]))
    for name, run in runs.items():
        if not run.delta_intact:
            section.add(Notice("fail", f"The {name} delta file does not match the sha256 recorded when it was written: "
                                       "it changed after training. Do not deploy it; retrain or restore the original."))
    fingerprints = {r.selection.get("base_fingerprint") for r in runs.values()}
    if len(runs) > 1 and len(fingerprints) == 1:
        section.add(Paragraph("Both deltas apply to the same base weights (identical base fingerprints)."))
    elif len(runs) > 1:
        section.add(Paragraph("The deltas apply to different base weights (their fingerprints differ): the update was trained "
                              "on another starting point than the model in use, e.g. on the model in use merged into plain weights."))
    for name, run in runs.items():
        section.add(Paragraph(f"Command ({name}):"), Code(command_line(run)))
    return section


def change_section(update: RunEvidence, base: RunEvidence | None) -> Section:
    m, sel = update.metrics, update.selection
    section = Section("The change")
    options = ", ".join(f"{k}={v}" for k, v in sorted((m.get("method_options") or {}).items())) or "defaults"
    section.add(Paragraph(
        f"Method {m.get('method')} ({options}) trained {m.get('trainable_parameters', 0):,} of {m.get('total_parameters', 0):,} "
        f"parameters ({m.get('trainable_percent', 0):.3f}%) in {len(sel.get('trainable', []))} tensors; everything else is the "
        f"base model, bit for bit. The delta file holds only the trained tensors ({update.delta_bytes:,} bytes)."))
    roles = [[r["role"], r["tensors"], r["trainable"], r["total"], r["pct_of_role"], r["pct_of_model"]] for r in m.get("roles", [])]
    section.sub("What trained, by role").add(
        Table(["role", "tensors", "trainable", "total", "% of role", "% of model"], roles,
              "Parameter counts per architectural role (selectune.roles); masked tensors count their trained entries."))
    details = section.subsections[-1]
    for label, names in (("new (random-init, always trained)", sel.get("new_parameters", [])),
                         ("inserted (zero-init biases)", sel.get("inserted_parameters", [])),
                         ("element-masked", sel.get("masked", []))):
        if names:
            shown = ", ".join(names[:8]) + (f", … ({len(names)} in all)" if len(names) > 8 else "")
            details.add(Paragraph(f"{label}: {redact(shown)}"))

    runs = {"update": update, **({"base (in use)": base} if base else {})}
    train_cfgs = {name: r.config.get("train_config", {}) for name, r in runs.items()}
    keys = [k for k in HYPERPARAMETERS if any(k in c for c in train_cfgs.values())]
    rows = [["method", *(r.metrics.get("method") for r in runs.values())],
            ["method options", *(str(r.metrics.get("method_options") or {}) for r in runs.values())]]
    rows += [[k, *(train_cfgs[n].get(k) for n in runs)] for k in keys]
    rows += [["max_length", *(r.config.get("max_length") for r in runs.values())],
             ["best epoch", *(r.metrics.get("best_epoch") for r in runs.values())],
             ["train seconds", *(r.metrics.get("train_seconds") for r in runs.values())]]
    section.sub("Hyperparameters").add(Table(["setting", *runs], rows))

    history = m.get("history") or []
    if history:
        metric = update.config.get("train_config", {}).get("metric", "macro_f1")
        hist = section.sub("Training history (update)")
        if m.get("best_validation"):
            caption = (f"Update: training loss and validation {metric} per epoch; best epoch {m.get('best_epoch')} was kept"
                       + (" (keep-best)" if update.config.get("train_config", {}).get("keep_best") else ""))
        else:  # --val-fraction 0: trained on every row, nothing scored during training
            caption = f"Update: training loss per epoch; no validation rows, so the last epoch ({m.get('best_epoch')}) was kept"
        hist.add(Figure("history", history_figure(history, metric), caption))
        cols = sorted({k for h in history for k in h if k != "epoch"})
        hist.add(Table(["epoch", *cols], [[h["epoch"], *(h.get(c) for c in cols)] for h in history]))
    return section


def _prevalence_rows(checks: dict) -> tuple[list[str], list[list]] | None:
    for result in checks.get("results", []):
        if result.get("check") == "class_imbalance" and result.get("details", {}).get("counts"):
            counts = result["details"]["counts"]  # split -> class -> rows
            classes = sorted({c for per in counts.values() for c in per})
            rows = []
            for split, per in counts.items():
                total = sum(per.values()) or 1
                rows.append([split, total, *(f"{per.get(c, 0)} ({per.get(c, 0) / total:.1%})" for c in classes)])
            return ["split", "rows", *(redact(c) for c in classes)], rows
    return None


def data_section(update: RunEvidence, base: RunEvidence | None, evaluation_data: list[list] | None = None) -> Section:
    """evaluation_data: rows (role, path, sha256, rows) of the files the gate evaluated on, when there was a gate."""
    section = Section("Data")
    runs = {"update": update, **({"base (in use)": base} if base else {})}
    files = []
    for name, run in runs.items():
        sizes = run.metrics.get("split_protocol", {}).get("sizes", {})
        for role, info in run.config.get("data_files", {}).items():
            files.append([name, role, redact(Path(info.get("path", "")).name), info.get("sha256"), sizes.get(role)])
        for role in ("validation", "test"):
            if role not in run.config.get("data_files", {}) and sizes.get(role):
                files.append([name, role, "split off the training file", "–", sizes.get(role)])
    files += [["gate evaluation", *row] for row in (evaluation_data or [])]
    section.add(Table(["run", "split", "file", "sha256", "rows used"], files,
                      "Files as recorded when each run read them; the sha256 identifies the exact bytes."))

    protocol = update.metrics.get("split_protocol", {})
    feature_cols = protocol.get("feature_cols") or []
    section.sub("Split protocol (update)").add(Fields([
        ("source", "validation/test split off the training file" if protocol.get("source") == "split" else "separate files"),
        ("validation fraction", protocol.get("val_fraction")), ("test fraction", protocol.get("test_fraction")),
        ("split seed", protocol.get("seed")), ("stratified by label", protocol.get("stratified")),
        ("patient/group column (kept within one split)", redact(protocol.get("group_col") or "none")),
        ("label column", redact(protocol.get("label_col"))), ("task", protocol.get("task")),
        ("text column", redact(protocol.get("text_col") or "–")),
        ("feature columns", redact(", ".join(feature_cols[:12]) + (f", … ({len(feature_cols)})" if len(feature_cols) > 12 else "")) or "–"),
        ("labels", redact(", ".join(update.task.get("labels") or []) or "–")),
    ]))

    prevalence = section.sub("Prevalence per split (update)")
    checks = section.sub("Data checks")
    for name, run in runs.items():
        if run.checks is None:
            prevalence.add(Notice("missing", f"The {name} run has no checks.json (it predates the data checks), so label "
                                             "counts per split were not recorded; run `selectune check` on its files."))
            checks.add(Notice("missing", f"No data check results for the {name} run (no checks.json in its folder)."))
            continue
        if name == "update":
            table = _prevalence_rows(run.checks)
            if table:
                prevalence.add(Table(*table, "Rows per class in each split, with the share of the split."))
            else:
                prevalence.add(Notice("missing", "The checks recorded no label counts (regression, or no label column)."))
        status = run.checks.get("status", "?")
        checks.add(Notice({"pass": "pass", "warn": "warn", "refuse": "fail"}.get(status, "warn"),
                          f"{name}: data checks {status} (leakage by id and by copy, imbalance, prevalence shift, subgroup sizes, "
                          "identifier-like text; counts only, never the matched text)."))
        checks.add(Table(["run", "check", "status", "finding"],
                         [[name, r.get("check"), r.get("status"), redact(r.get("message"))] for r in run.checks.get("results", [])]))
    return section
