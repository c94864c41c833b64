"""What a sweep prints at its end and what `xalign report` shows: the trials sorted by the
objectives, the Pareto front, the best trial against the base model and the controls."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Optional, Sequence

import yaml

from xalign import tracking
from xalign.config.sweep import SweepConfig
from xalign.eval import plots
from xalign.eval.records import read_records
from xalign.eval.stats import item_outcomes
from xalign.sweep.compare import Table, Variant, base_variant, comparison_table
from xalign.sweep.runner import SweepResult, Trial, compute_use

COLUMNS = ("eval/acc_non_pivot", "eval/acc_pivot", "eval/gap", "align/retrieval/top1", "align/mexa")


def _fmt(value) -> str:
    return f"{100 * value:6.1f}" if isinstance(value, (int, float)) else f"{'-':>6}"


def trial_columns(trials: Sequence) -> tuple[str, ...]:
    """The trial table's metric columns: the test evaluation's, or the last dev evaluation's
    when no trial has test numbers (search trials under tune.final_eval false)."""
    if any(c in t.metrics for t in trials for c in COLUMNS[:3]):
        return COLUMNS
    return tuple("dev/" + c.split("/", 1)[1] if c.startswith("eval/") else c for c in COLUMNS)


def _param(value) -> str:
    """A sampled value as the table shows it: floats to 4 significant digits (7.254e-05, not
    a truncated '7.253753'), anything else cut to 10 characters."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return f"{value!s:.10}"


def trial_table(trials: Sequence, objectives: dict[str, str], varied: Sequence[str]) -> str:
    first, mode = next(iter(objectives.items()))
    ordered = sorted(trials, key=lambda t: t.metrics.get(first, float("-inf") if mode == "max" else float("inf")),
                     reverse=mode == "max")
    columns = trial_columns(trials)
    head = f"{'trial':<14}{'status':<11}" + "".join(f"{c.split('/', 1)[1][:10]:>11}" for c in columns) + \
        f"{'secs':>7}  " + "  ".join(varied)
    lines = [head]
    for t in ordered:
        params = "  ".join(_param(t.params.get(k)) for k in varied)
        lines.append(f"{t.trial_id[:13]:<14}{t.status:<11}" + "".join(f"{_fmt(t.metrics.get(c)):>11}" for c in columns)
                     + f"{t.seconds:7.0f}  " + params)
    if columns is not COLUMNS and trials:
        lines.append("(the search trials skipped the test evaluation (tune.final_eval false): accuracy and gap are "
                     "the last dev evaluation's)")
    return "\n".join(lines)


def _spread(values: Sequence[float]) -> str:
    if not values:
        return "     -      "
    mean = 100 * statistics.mean(values)
    sd = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:5.1f} ± {sd:4.1f}"


def comparison(result, base: dict) -> str:
    """Base model vs the best config and the controls (confirmation phase, mean ± sd over
    seeds), each with its change from the base model."""
    groups: dict[str, list] = {}
    for t in result.trials:
        if t.phase == "confirm" and t.status == "TERMINATED":
            groups.setdefault(t.params.get("__control__", "best"), []).append(t)
    if not groups and result.best is not None:
        groups["best"] = [result.best]
    names = [("acc_non_pivot", "non-pivot acc"), ("acc_pivot", "pivot acc"), ("gap", "gap")]
    lines = [f"{'':<16}" + "".join(f"{label:>24}" for _, label in names) +
             f"{'retrieval':>24}{'MEXA':>24}"]
    base_row = [base.get(f"base/{key}") for key, _ in names] + [base.get("base/align/retrieval/top1"),
                                                                 base.get("base/align/mexa")]
    lines.append(f"{'base model':<16}" + "".join(f"{_fmt(v):>24}" for v in base_row))
    for group, trials in groups.items():
        cells = []
        keys = [f"eval/{key}" for key, _ in names] + ["align/retrieval/top1", "align/mexa"]
        for key, base_value in zip(keys, base_row):
            values = [t.metrics[key] for t in trials if key in t.metrics]
            delta = (f" ({100 * (statistics.mean(values) - base_value):+5.1f})"
                     if values and isinstance(base_value, (int, float)) else "")
            cells.append(f"{_spread(values)}{delta}")
        lines.append(f"{group + f' (n={len(trials)})':<16}" + "".join(f"{c:>24}" for c in cells))
    return "\n".join(lines)


def compute_line(use: dict, scheduler: str) -> str:
    """How much of the search ran, against every trial run to the end (ASHA's saving)."""
    if not use.get("steps_full") or scheduler == "fifo":   # fifo runs every trial to the end
        return ""
    return (f"Compute: {scheduler} ran {use['steps_run']:.0f} of {use['steps_full']:.0f} trial steps "
            f"({100 * use['compute_saved']:.0f}% saved against running every trial to the end; "
            f"{use['trials_stopped']:.0f} trials stopped early, their final evaluation skipped)")


def summary(result, sweep: SweepConfig) -> str:
    varied = list(sweep.search)
    out = [f"Sweep {result.name}: {len(result.trials)} trials ({result.path})",
           trial_table([t for t in result.trials if t.phase == "search"], sweep.tune.metrics, varied)]
    line = compute_line(compute_use(result.trials, sweep.run_config().optim.max_steps), sweep.tune.scheduler)
    if line:
        out.append(line)
    if result.pareto:
        out.append("Pareto front: " + ", ".join(t.trial_id for t in result.pareto))
    if result.best is not None:
        out.append(f"Best trial {result.best.trial_id}: " + ", ".join(f"{k}={v}" for k, v in result.best.params.items()))
        out.append(comparison(result, result.base_metrics))
        out.append(result.comparison or "\n".join(t.text(title) for title, t in metrics_tables(result)))
    if result.parent_run_id:
        uri = tracking.tracking_uri(sweep.tracking)
        command, url = tracking.ui_link(sweep.tracking, view=tracking.view_key(result.name))
        out.append(f"MLflow (parent run {result.parent_run_id}): {command + ', then open ' if command else 'open '}"
                   f"{url}")
        if result.report_html:
            out.append(f"HTML report: {result.report_html}")
        out.append(f"Report: xalign report {result.name} tracking_uri={uri} experiment={sweep.tracking.experiment}")
    return "\n".join(out)


TABLE_TITLE = "Per task and language: the starting model (base), the best config and the controls"


def protocol_prefixes(metrics: Sequence[dict]) -> list[str]:
    """``eval``, then the prefix of each further protocol evaluated (``eval_same``)."""
    return ["eval"] + sorted({k.split("/", 1)[0] for m in metrics for k in m if k.startswith("eval_")})


def table_title(prefix: str) -> str:
    return TABLE_TITLE + (f" (protocol {prefix.removeprefix('eval_')}: {prefix}/...)" if prefix != "eval" else "")


def metrics_tables(result) -> list[tuple[str, Table]]:
    """The per-language comparison (one per protocol evaluated) from the trials' metrics
    alone (no per-item records: standard errors of independent proportions)."""
    variants = [base_variant(result.base_metrics)]
    variants += [Variant(name, [t.metrics for t in runs]) for name, runs in groups_of(result.trials, result.best).items()]
    some = next((t.metrics for t in result.trials if t.phase == "confirm"), result.best.metrics if result.best else {})
    pivot = _pivot(some) or _pivot(variants[0].metrics[0] if variants[0].metrics else {}) or ""
    return [(table_title(prefix), comparison_table(variants, pivot, prefix))
            for prefix in protocol_prefixes([m for v in variants for m in v.metrics])]


def metrics_table(result) -> Table:
    """The primary protocol's table of ``metrics_tables``."""
    return metrics_tables(result)[0][1]


def _records(download, run_id: str, artifact: str, folder: Path, normalization: str):
    """The per-item outcomes of a run's records artifact; None where it has none."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return item_outcomes(read_records(download(run_id, artifact, str(folder))), normalization)
    except Exception:  # noqa: BLE001  (not logged: tracking of artifacts off, or an older run)
        return None


def records_table(parent, runs: dict[str, list], base: dict, download, out_dir: Path, pivot: str,
                  prefix: str = "eval") -> Table:
    """The per-language comparison with every run's per-item records read from MLflow
    (paired standard errors where all of a difference's runs have them); ``prefix``: the
    protocol's (``eval``, ``eval_same``), whose records are ``eval/<prefix>_records.jsonl``."""
    folder = out_dir / "artifacts"
    normalization = next((r.data.params.get("eval.normalization") for rs in runs.values() for r in rs), None) or "none"
    variants = [base_variant(base, _records(download, parent.info.run_id, f"eval/base{prefix[4:]}_records.jsonl",
                                            folder / parent.info.run_id, normalization))]
    for name, group in runs.items():
        outcomes = [_records(download, r.info.run_id, f"eval/{prefix}_records.jsonl", folder / r.info.run_id,
                             normalization) for r in group]
        variants.append(Variant(name, [dict(r.data.metrics) for r in group],
                                outcomes if all(o is not None for o in outcomes) else None))
    return comparison_table(variants, pivot, prefix)


# --- `xalign report SWEEP_NAME`: a sweep read back from MLflow ----------------------------

def report(tracking_cfg, name: str, *, out_dir: Path) -> str:
    """The trials sorted by the first objective (the params that varied, per-language
    accuracy, gap, retrieval, wall time), the best config as YAML, and plots."""
    parent, children, download = tracking.sweep_runs(tracking_cfg, name)
    objectives = {k.removeprefix("tune.metrics."): v for k, v in parent.data.params.items()
                  if k.startswith("tune.metrics.")} or {"eval/acc_non_pivot": "max"}
    searched = [k.removeprefix("search.") for k in parent.data.params if k.startswith("search.")]
    trials = []
    for run in children:
        if run.data.tags.get("xalign.orphaned"):     # a trial Tune lost with a killed driver, re-run
            continue
        seconds = ((run.info.end_time or run.info.start_time) - run.info.start_time) / 1000
        params = {k: _parse(run.data.params.get(k)) for k in searched}
        variant = run.data.tags.get("xalign.variant")
        if variant:
            params["__control__"] = variant
        status = {"FINISHED": "TERMINATED", "KILLED": "STOPPED"}.get(run.info.status, run.info.status)
        trials.append(Trial(run.data.tags.get("xalign.trial_id", run.info.run_id[:8]),
                            run.data.tags.get("xalign.phase", "search"), params, dict(run.data.metrics),
                            status, seconds))
    lines = [f"Sweep {name} (parent run {parent.info.run_id}, {len(trials)} trials)",
             trial_table([t for t in trials if t.phase == "search"], objectives, searched)]
    use = {k.removeprefix("sweep/"): v for k, v in parent.data.metrics.items() if k.startswith("sweep/")}
    line = compute_line(use, parent.data.params.get("tune.scheduler", "the scheduler"))
    if line:
        lines.append(line)
    best_id = parent.data.tags.get("xalign.best_trial_id")
    base = {k.removeprefix("best/"): v for k, v in parent.data.metrics.items()
            if k.startswith(("best/base/", "best/base_"))}
    base.update({k: v for k, v in parent.data.metrics.items() if k.startswith(("base/", "base_"))})
    tables: list[tuple[str, Table]] = []
    best = next((t for t in trials if t.trial_id == best_id), None) if best_id else None
    shown, label = after_run(trials, best)   # "after": the best config's confirmation run, or the best trial
    if best_id:
        lines.append(comparison(SweepResult(name, trials, best, [], parent.info.run_id, ""), base))
        by_id = {run.data.tags.get("xalign.trial_id", run.info.run_id[:8]): run for run in children}
        runs = {group: [by_id[t.trial_id] for t in members if t.trial_id in by_id]
                for group, members in groups_of(trials, best).items()}
        some = next((t.metrics for t in trials if t.phase == "confirm"), best.metrics if best else {})
        prefixes = protocol_prefixes([dict(r.data.metrics) for rs in runs.values() for r in rs])
        tables = [(table_title(prefix), records_table(parent, runs, base, download, out_dir, _pivot(some) or "", prefix))
                  for prefix in prefixes]
        text = "\n".join(table.text(title) for title, table in tables)
        lines.append(text)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "comparison.txt").write_text(text + "\n", encoding="utf-8")
        path = download(parent.info.run_id, "best_config.yaml", str(out_dir))
        lines.append("Best config (ready to run with `xalign train`):\n" + Path(path).read_text())
        if shown is not None:
            run = by_id.get(shown.trial_id)
            # the run's own data.pivot param; else the language whose accuracy is acc_pivot
            pivot = (run.data.params.get("data.pivot") if run is not None else None) or _pivot(shown.metrics) or ""
            merged = {**{k: v for k, v in shown.metrics.items() if k.startswith("eval/")}, **base}
            out_dir.mkdir(parents=True, exist_ok=True)
            plots.accuracy_bars(merged, pivot=pivot, path=out_dir / "best_accuracy.png", title=label)
            plots.accuracy_bars(merged, pivot=pivot, path=out_dir / "base_accuracy.png",
                          prefix="base", title="base model")
    gap = search_gap_metric(trials)
    search = [t for t in trials if t.phase == "search" and gap in t.metrics]
    for key in searched:
        if search:
            scatter(search, key, gap, out_dir / f"gap_vs_{key.replace('.', '_')}.png")
    names = {run.data.tags.get("xalign.trial_id", ""): run.info.run_name for run in children}
    page = html_report(name, parent.info.run_id, trials, objectives, searched, base, best, names, out_dir,
                       projections=_projections(parent, children, shown.trial_id if shown else None, download,
                                                out_dir),
                       tables=tables, after_label=label or "best trial")
    lines.append(f"Plots: {out_dir}")
    lines.append(f"HTML report: {page}")
    return "\n".join(lines)


def after_run(trials: Sequence, best) -> tuple[Optional[Trial], str]:
    """The run whose test evaluation stands for "after": the best config's first confirmation
    run, else the best search trial (whose test evaluation a sweep with tune.final_eval false
    skipped); and how plots name it."""
    confirmed = [t for t in trials if t.phase == "confirm" and t.status == "TERMINATED"
                 and t.params.get("__control__", "best") == "best"]
    if confirmed:
        return confirmed[0], f"best config, confirmation run {confirmed[0].trial_id}"
    return best, f"best trial {best.trial_id}" if best is not None else ""


def search_gap_metric(trials: Sequence) -> str:
    """What the search trials' gap plots show: the test gap, or the dev gap of the last
    periodic evaluation when the search trials skipped the test evaluation."""
    return "eval/gap" if any("eval/gap" in t.metrics for t in trials if t.phase == "search") else "dev/gap"


def _projections(parent, children, after_id: Optional[str], download, out_dir: Path
                 ) -> tuple[Optional[Path], Optional[Path]]:
    """The representation projections logged with the evaluations: the starting model's (the
    sweep's base evaluation, on the parent run) and the "after" run's (see ``after_run``),
    downloaded."""
    found = []
    best_run = next((r for r in children if r.data.tags.get("xalign.trial_id") == after_id), None) \
        if after_id else None
    for run, artifact in ((parent, "eval/base_representations.png"), (best_run, "eval/eval_representations.png")):
        path = None
        if run is not None:
            try:
                folder = out_dir / "artifacts" / run.info.run_id
                folder.mkdir(parents=True, exist_ok=True)
                path = Path(download(run.info.run_id, artifact, str(folder)))
            except Exception:  # noqa: BLE001  (not logged: tracking was off for the evaluation, or no world)
                path = None
        found.append(path)
    return found[0], found[1]


def _cell(value) -> str:
    return f"{100 * value:.1f}" if isinstance(value, (int, float)) else "-"


def _mean_sd(values: Sequence[float]) -> str:
    if not values:
        return "-"
    sd = f" ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else ""
    return f"{100 * statistics.mean(values):.1f}{sd}"


def groups_of(trials: Sequence, best) -> dict[str, list]:
    """The confirmation runs by variant ("best", then each control); the best search trial
    alone when nothing was confirmed."""
    groups: dict[str, list] = {}
    for t in trials:
        if t.phase == "confirm" and t.status == "TERMINATED":
            groups.setdefault(t.params.get("__control__", "best"), []).append(t)
    if "best" not in groups and best is not None:
        groups["best"] = [best]
    return {name: groups[name] for name in sorted(groups, key=lambda name: (name != "best", name))}


def html_report(name: str, parent_id: str, trials: Sequence, objectives: dict, searched: Sequence[str], base: dict,
                best, names: dict[str, str], out_dir: Path, *,
                projections: tuple[Optional[Path], Optional[Path]] = (None, None),
                tables: Sequence[tuple[str, Table]] = (), after_label: str = "best trial") -> Path:
    """``report.html`` in ``out_dir``: the base model against the best config and the
    controls, accuracy per task and language before and after, the Pareto front, the
    representation projection before and after, the search trials and the best config."""
    from xalign.sweep.page import Page

    page = Page(f"Sweep {name}")
    page.text(f"MLflow parent run {parent_id}; {len(trials)} trials. Accuracies in %, mean ± sd over seeds; "
              "changes against the starting model in points.", note=True)
    groups = groups_of(trials, best)
    keys = [("eval/acc_non_pivot", "base/acc_non_pivot", "non-pivot acc"), ("eval/acc_pivot", "base/acc_pivot", "pivot acc"),
            ("eval/gap", "base/gap", "gap"), ("align/retrieval/top1", "base/align/retrieval/top1", "retrieval top-1"),
            ("align/mexa", "base/align/mexa", "MEXA")]
    rows = [["starting model", "-"] + [_cell(base.get(b)) for _, b, _ in keys]]
    for group, runs in groups.items():
        cells = []
        for key, base_key, _ in keys:
            values = [t.metrics[key] for t in runs if isinstance(t.metrics.get(key), (int, float))]
            delta = (f" ({100 * (statistics.mean(values) - base[base_key]):+.1f})"
                     if values and isinstance(base.get(base_key), (int, float)) else "")
            cells.append(_mean_sd(values) + delta)
        rows.append([group + (" config" if group == "best" else ""), len(runs)] + cells)
    page.heading("Starting model, best config and controls")
    page.table(["", "runs"] + [label for _, _, label in keys], rows)
    for title, table in tables:
        page.heading("Per task and language, with standard errors" + title.removeprefix(TABLE_TITLE))
        page.table(table.header, table.rows)
        for note in table.notes:
            page.text(note, note=True)

    after = groups.get("best", [])
    cells = sorted({tuple(k.split("/")[1:3]) for t in after for k in t.metrics
                    if k.startswith("eval/") and k.count("/") == 3 and k.endswith("/acc")})
    if cells:
        rows = []
        for task, lang in cells:
            values = [t.metrics[f"eval/{task}/{lang}/acc"] for t in after if f"eval/{task}/{lang}/acc" in t.metrics]
            before = base.get(f"base/{task}/{lang}/acc")
            change = (f"{100 * (statistics.mean(values) - before):+.1f}"
                      if values and isinstance(before, (int, float)) else "-")
            rows.append([task, lang, _cell(before), _mean_sd(values), change])
        page.heading("Accuracy per task and language, before and after")
        page.table(["task", "language", "starting model", "best config", "change"], rows)
    page.figure(out_dir / "base_accuracy.png", "before: the starting model")
    page.figure(out_dir / "best_accuracy.png", f"after: the {after_label}")

    search = [t for t in trials if t.phase == "search"]
    metrics = list(objectives)
    x_key, y_key = (metrics[0], metrics[1]) if len(metrics) > 1 else (metrics[0], "eval/gap")
    points = [t for t in search if isinstance(t.metrics.get(x_key), (int, float))
              and isinstance(t.metrics.get(y_key), (int, float))]
    page.heading("Pareto front")
    if points:
        from xalign.sweep.space import pareto_front

        front = {t.trial_id for t in pareto_front(points, {m: objectives.get(m, "max") for m in (x_key, y_key)})}
        plots.pareto([100 * t.metrics[x_key] for t in points], [100 * t.metrics[y_key] for t in points],
                     [t.trial_id in front for t in points], labels=[names.get(t.trial_id, t.trial_id).split(":")[0]
                                                                     for t in points],
                     xlabel=f"{x_key} (%)", ylabel=f"{y_key} (%)", path=out_dir / "pareto.png")
        page.figure(out_dir / "pareto.png", f"search trials on {x_key} and {y_key}; red: the Pareto front")
    else:
        page.text("(no search trial reached its final evaluation)", note=True)
    page.heading("Sentence representations, before and after")
    page.figure(projections[0], "before: the starting model (PCA, coloured by language)")
    page.figure(projections[1], f"after: the {after_label} (PCA, coloured by language)")

    first, mode = next(iter(objectives.items()))
    ordered = sorted(search, key=lambda t: t.metrics.get(first, float("-inf") if mode == "max" else float("inf")),
                     reverse=mode == "max")
    page.heading("Search trials")
    columns = trial_columns(search)
    page.table(["trial", "status"] + list(columns) + ["seconds"],
               [[names.get(t.trial_id, t.trial_id), t.status] + [_cell(t.metrics.get(c)) for c in columns]
                + [f"{t.seconds:.0f}"] for t in ordered])
    gap = search_gap_metric(trials)
    for key in searched:
        page.figure(out_dir / f"gap_vs_{key.replace('.', '_')}.png", f"{gap} against {key}")
    config = out_dir / "best_config.yaml"
    if config.is_file():
        page.heading("Best config (ready for `xalign train`)")
        page.pre(config.read_text(encoding="utf-8"))
    return page.write(out_dir / "report.html")


def _parse(value):
    try:
        return yaml.safe_load(value) if value is not None else None
    except yaml.YAMLError:
        return value


def _pivot(metrics: dict) -> str | None:
    """The pivot: the language whose accuracy enters acc_pivot (the one no gap is over)."""
    cells = [k.split("/")[1:3] for k in metrics if k.startswith("eval/") and k.count("/") == 3 and k.endswith("/acc")]
    tasks = {lang: sum(1 for _, other in cells if other == lang) for _, lang in cells}
    target = metrics.get("eval/acc_pivot")
    # The pivot is evaluated in every task: languages in more tasks first (a language of one
    # task can match the pivot's mean by chance: PAWS-X de 56 = (en 51 + en 61) / 2).
    for lang in sorted(tasks, key=lambda lang: (-tasks[lang], lang)):
        values = [v for k, v in metrics.items() if k.startswith("eval/") and k.endswith(f"/{lang}/acc")]
        if values and target is not None and abs(sum(values) / len(values) - target) < 1e-9:
            return lang
    return None


def scatter(trials: Sequence, key: str, metric: str, path: Path) -> Path:
    """``metric`` (in points) against the value of ``key`` each trial had."""
    return plots.scatter([t.params.get(key) for t in trials], [100 * t.metrics[metric] for t in trials],
                         xlabel=key, ylabel=f"{metric} (points)", path=path, log_x=key.endswith("temperature"))
