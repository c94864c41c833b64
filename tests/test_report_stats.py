"""The statistics behind `xalign report`'s per-language table (paired and independent standard
errors of accuracy differences, their combination over languages) and the table itself, on
hand-computed cases."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from xalign.eval.stats import Difference, combine, independent, item_outcomes, mean_outcomes, paired
from xalign.sweep.compare import Variant, base_variant, comparison_table


def test_paired_standard_error_is_the_sd_of_item_differences_over_sqrt_n():
    a = {"1": 1.0, "2": 1.0, "3": 0.0, "4": 0.0}
    # d = [1, 0, 0, -1]: mean 0, sd sqrt(2/3), SE sqrt(2/3) / 2
    d = paired(a, {"1": 0.0, "2": 1.0, "3": 0.0, "4": 1.0})
    assert (d.value, d.n, d.paired) == (0.0, 4, True) and d.se == pytest.approx(math.sqrt(2 / 3) / 2)
    # d = [1, 1, 0, 0]: mean 0.5, sd sqrt(1/3); an item only one side has is left out
    d = paired(a, {"1": 0.0, "2": 0.0, "3": 0.0, "4": 0.0, "5": 1.0})
    assert (d.value, d.n) == (0.5, 4) and d.se == pytest.approx(math.sqrt(1 / 3) / 2)
    assert paired({"1": 1.0}, {"2": 1.0}).n == 0


def test_independent_and_combined_standard_errors():
    d = independent(0.5, 0.5, 4)
    assert d.value == 0 and d.se == pytest.approx(math.sqrt(0.25 / 4 + 0.25 / 4)) and not d.paired
    d = independent(0.625, 0.25, 4)
    assert d.se == pytest.approx(math.sqrt(0.625 * 0.375 / 4 + 0.25 * 0.75 / 4))
    # the mean of two languages: value 0.2, SE sqrt(0.25 * 0.03^2 + 0.25 * 0.04^2) = 0.025, n 200
    both = combine([(0.5, Difference(0.1, 0.03, 100, True)), (0.5, Difference(0.3, 0.04, 100, True))])
    assert both.value == pytest.approx(0.2) and both.se == pytest.approx(0.025) and both.n == 200 and both.paired
    gap = combine([(1.0, Difference(0.1, 0.03, 50, True)), (-1.0, Difference(0.3, 0.04, 50, False))])
    assert gap.value == pytest.approx(-0.2) and gap.se == pytest.approx(0.05) and not gap.paired


def _records(task: str, cells: dict[str, list[int]], seeds: int = 1) -> list[dict]:
    return [{"task": task, "lang": lang, "idx": i, "correct": {"none": bool(c), "token": False}}
            for lang, row in cells.items() for _ in range(seeds) for i, c in enumerate(row)]


def test_item_outcomes_average_demonstration_seeds_and_runs():
    records = _records("xcopa", {"zh": [1, 0]}) + _records("xcopa", {"zh": [1, 1]})   # two demonstration seeds
    assert item_outcomes(records) == {("xcopa", "zh"): {"0": 1.0, "1": 0.5}}
    assert item_outcomes(records, "token") == {("xcopa", "zh"): {"0": 0.0, "1": 0.0}}
    runs = [{("xcopa", "zh"): {"0": 1.0, "1": 0.0}}, {("xcopa", "zh"): {"0": 0.0, "2": 1.0}}]
    assert mean_outcomes(runs) == {("xcopa", "zh"): {"0": 0.5}}          # item 0 only: both runs have it


BASE = {"xcopa": {"en": [1, 1, 1, 0], "zh": [1, 0, 0, 0]}}
BEST = [{"en": [1, 1, 1, 0], "zh": [1, 1, 0, 0]}, {"en": [1, 1, 0, 0], "zh": [1, 1, 1, 0]}]
NO_LM = {"en": [1, 1, 1, 1], "zh": [0, 0, 0, 0]}


def _metrics(cells: dict[str, list[int]], prefix: str = "eval") -> dict[str, float]:
    m = {f"{prefix}/xcopa/{lang}/acc": sum(row) / len(row) for lang, row in cells.items()}
    m.update({f"{prefix}/xcopa/{lang}/n_items": float(len(row)) for lang, row in cells.items()})
    m[f"{prefix}/acc_pivot"], m[f"{prefix}/acc_non_pivot"] = m[f"{prefix}/xcopa/en/acc"], m[f"{prefix}/xcopa/zh/acc"]
    m[f"{prefix}/gap"] = m[f"{prefix}/xcopa/gap"] = m[f"{prefix}/acc_pivot"] - m[f"{prefix}/acc_non_pivot"]
    return m


def _variants(records: bool):
    base = {**_metrics(BASE["xcopa"], "base"), "base/align/retrieval/top1": 0.1, "base/align/retrieval/zh/top1": 0.1,
            "base/align/retrieval/zh/n_pairs": 100.0}
    best = [{**_metrics(run), "align/retrieval/top1": r, "align/retrieval/zh/top1": r, "align/retrieval/zh/n_pairs": 100.0}
            for run, r in zip(BEST, (0.8, 0.9))]
    outcomes = (lambda cells: item_outcomes(_records("xcopa", cells))) if records else None
    return [base_variant(base, outcomes(BASE["xcopa"]) if records else None),
            Variant("best", best, [outcomes(run) for run in BEST] if records else None),
            Variant("no_lm", [_metrics(NO_LM)], [outcomes(NO_LM)] if records else None)]


def _rows(table) -> dict[tuple[str, str], dict[str, str]]:
    return {(r[0], r[1]): dict(zip(table.header, r)) for r in table.rows}


def test_comparison_table_with_records_has_paired_standard_errors():
    table = comparison_table(_variants(records=True), "en")
    assert table.header == ["task", "language", "base", "best", "no_lm", "n", "best - base", "no_lm - base",
                            "best - no_lm"]
    rows = _rows(table)
    zh = rows[("xcopa", "zh")]
    # best's items (mean over its 2 seeds) [1, 1, .5, 0] against base [1, 0, 0, 0]: d = [0, 1, .5, 0],
    # mean .375, sd .4787, SE .2394; against no_lm [0, 0, 0, 0]: mean .625, SE .2394
    assert (zh["base"], zh["best"], zh["no_lm"], zh["n"]) == ("25.0", "62.5 ± 17.7", "0.0", "4")
    assert (zh["best - base"], zh["no_lm - base"], zh["best - no_lm"]) == ("+37.5 ± 23.9", "-25.0 ± 25.0",
                                                                           "+62.5 ± 23.9")
    assert rows[("xcopa", "en*")]["best - base"] == "-12.5 ± 12.5"          # d = [0, 0, -.5, 0]
    # the English change apart from the non-English one; the gap's SE combines both
    assert rows[("all tasks", "en* (pivot)")]["best - base"] == "-12.5 ± 12.5"
    assert rows[("all tasks", "non-en")]["best - base"] == "+37.5 ± 23.9"
    assert rows[("xcopa", "non-en mean")]["n"] == "4"
    gap = rows[("all tasks", "gap")]
    assert gap["best"] == "0.0 ± 35.4" and gap["best - base"] == "-50.0 ± 27.0"   # sqrt(.125^2 + .2394^2)
    # retrieval: independent proportions over 100 held-out pairs, sqrt(.85 * .15 / 100 + .1 * .9 / 100)
    retrieval = rows[("retrieval top-1", "1 language")]
    assert (retrieval["n"], retrieval["best - base"], retrieval["no_lm - base"]) == ("100", "+75.0 ± 4.7", "-")
    assert any("paired over the items" in n for n in table.notes)
    text = table.text("Per task and language")
    lines = text.splitlines()
    assert lines[0] == "Per task and language" and lines[1].split()[:3] == ["task", "language", "base"]
    assert any(line.startswith("xcopa") and "+37.5 ± 23.9" in line and " 4 " in line for line in lines)
    assert len({len(line) for line in lines[1: 1 + 1 + len(table.rows)]}) == 1      # aligned columns


def test_comparison_table_without_records_uses_independent_proportions_and_says_so():
    table = comparison_table(_variants(records=False), "en")
    zh = _rows(table)[("xcopa", "zh")]
    # sqrt(.625 * .375 / 4 + .25 * .75 / 4) = .3248; n from the n_items metrics
    assert zh["best - base"] == "+37.5 ± 32.5" and zh["n"] == "4"
    assert any("independent proportions, sqrt(p1(1-p1)/n + p2(1-p2)/n)" in n for n in table.notes)
    mixed = _variants(records=True)
    mixed[2] = Variant("no_lm", mixed[2].metrics)                 # a control whose records are missing
    rows = _rows(comparison_table(mixed, "en"))
    assert rows[("xcopa", "zh")]["best - base"] == "+37.5 ± 23.9"          # still paired
    assert rows[("xcopa", "zh")]["no_lm - base"].endswith("†")             # independent, marked
    assert not rows[("retrieval top-1", "1 language")]["best - base"].endswith("†")


def test_a_sweep_without_confirmation_or_base_still_gets_a_table():
    table = comparison_table([base_variant({}), Variant("best", [_metrics(BEST[0])])], "en")
    assert table.header == ["task", "language", "best", "n"] and _rows(table)[("xcopa", "zh")]["best"] == "50.0"


def test_report_reads_records_from_mlflow_and_shows_the_table(tmp_path):
    """`xalign report` on a sweep logged to a real MLflow store (no Ray): the confirmation runs'
    and the starting model's per-item records give paired standard errors in the console
    table, report.html and comparison.txt."""
    import json

    from mlflow.tracking import MlflowClient

    from xalign.config.schema import TrackingConfig
    from xalign.sweep.report import report

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("sweeps")

    def run(tags, metrics, records=None, artifact="eval/eval_records.jsonl", params=()):
        r = client.create_run(exp, tags=tags)
        prefix = artifact.split("/")[1].removesuffix("_records.jsonl")      # eval or base
        # a second protocol (eval.protocol [cross, same]): its metrics and records under <prefix>_same
        metrics = {**metrics, **{k.replace(f"{prefix}/", f"{prefix}_same/", 1): v for k, v in metrics.items()}}
        for k, v in metrics.items():
            client.log_metric(r.info.run_id, k, v)
        for k, v in params:
            client.log_param(r.info.run_id, k, v)
        if records is not None:
            for name in (artifact, artifact.replace("_records", "_same_records")):
                client.log_text(r.info.run_id, "".join(json.dumps(x) + "\n" for x in records), name)
        client.set_terminated(r.info.run_id, "FINISHED")
        return r.info.run_id

    parent = run({"xalign.sweep": "tiny", "xalign.kind": "sweep", "xalign.best_trial_id": "s1"},
                 _metrics(BASE["xcopa"], "base"), _records("xcopa", BASE["xcopa"]), "eval/base_records.jsonl",
                 params=[("tune.metrics.eval/acc_non_pivot", "max")])
    client.log_text(parent, "optim:\n  lr: 0.001\n", "best_config.yaml")
    child = {"mlflow.parentRunId": parent}
    norm = [("eval.normalization", "none")]
    run({**child, "xalign.trial_id": "s1", "xalign.phase": "search"}, _metrics(BEST[0]), params=norm)
    for i, cells in enumerate(BEST):
        run({**child, "xalign.trial_id": f"c{i}", "xalign.phase": "confirm", "xalign.variant": "best"},
            _metrics(cells), _records("xcopa", cells), params=norm)
    run({**child, "xalign.trial_id": "c9", "xalign.phase": "confirm", "xalign.variant": "no_lm"},
        _metrics(NO_LM), _records("xcopa", NO_LM), params=norm)

    out = tmp_path / "report"
    text = report(TrackingConfig(tracking_uri=uri, experiment="sweeps"), "tiny", out_dir=out)
    lines = [x for x in text.splitlines() if x.startswith("xcopa") and " zh " in x]
    assert len(lines) == 2 and lines[0] == lines[1]          # one table per protocol, the same numbers here
    assert lines[0].split() == ["xcopa", "zh", "25.0", "62.5", "±", "17.7", "0.0", "4", "+37.5", "±", "23.9",
                                "-25.0", "±", "25.0", "+62.5", "±", "23.9"]
    assert "the best config and the controls (protocol same: eval_same/...)" in text
    assert text.count("paired over the items, from every run's per-item records") == 2
    assert "paired over the items, from every run's per-item records" in text and "* = the pivot (en)" in text
    assert next(x for x in text.splitlines() if "en* (pivot)" in x).split()[-9:] == [
        "-12.5", "±", "12.5", "+25.0", "±", "25.0", "-37.5", "±", "23.9"]
    assert (out / "comparison.txt").read_text().splitlines()[0].startswith("Per task and language")
    page = (out / "report.html").read_text()
    assert "Per task and language, with standard errors" in page and "+37.5 ± 23.9" in page
    assert "best - no_lm" in page and "paired over the items" in page
    assert "Per task and language, with standard errors (protocol same: eval_same/...)" in page
    # at the end of `xalign sweep`: the report's table goes into the summary the parent run holds
    from xalign.config.sweep import SweepConfig
    from xalign.sweep.runner import SweepResult, Trial, attach_report

    sweep = SweepConfig.model_validate({"tracking": {"tracking_uri": uri, "experiment": "sweeps"}})
    best = Trial("s1", "search", {}, _metrics(BEST[0]), "TERMINATED")
    result = SweepResult("tiny", [best], best, [best], parent, str(tmp_path / "sweep"))
    attach_report(sweep, parent, result)
    assert result.comparison.startswith("Per task and language") and "+62.5 ± 23.9" in result.comparison
    summary = Path(client.download_artifacts(parent, "summary.txt", str(tmp_path))).read_text()
    assert result.comparison in summary
    assert "report/comparison.txt" in {a.path for a in client.list_artifacts(parent, "report")}


def test_the_sweep_summary_table_from_metrics_alone():
    """At a sweep's end without the report's records (e.g. its report failed), the summary's
    table comes from the trials' metrics: independent-proportion SEs with the n_items counts."""
    from xalign.sweep.report import metrics_table
    from xalign.sweep.runner import SweepResult, Trial

    best = Trial("s1", "search", {"objective.temperature": 0.1}, _metrics(BEST[0]), "TERMINATED")
    trials = [best] + [Trial(f"c{i}", "confirm", {"seed": i}, _metrics(m), "TERMINATED") for i, m in enumerate(BEST)]
    trials.append(Trial("c9", "confirm", {"seed": 0, "__control__": "no_lm"}, _metrics(NO_LM), "TERMINATED"))
    result = SweepResult("x", trials, best, [best], None, "", base_metrics=_metrics(BASE["xcopa"], "base"))
    table = metrics_table(result)
    assert table.header[2:5] == ["base", "best", "no_lm"]
    assert _rows(table)[("all tasks", "non-en")]["best - base"] == "+37.5 ± 32.5"


def test_after_is_the_best_configs_confirmation_run_when_search_trials_skipped_the_test_eval():
    """tune.final_eval false: the search trials have dev metrics only, so the report's "after"
    plots and projection come from the best config's first confirmation run (not a control),
    and the search trials' gap plots show the dev gap."""
    from xalign.sweep.report import after_run, search_gap_metric
    from xalign.sweep.runner import Trial

    best = Trial("a", "search", {"optim.lr": 1e-4}, {"dev/gap": 0.1}, "TERMINATED")
    trials = [best, Trial("b", "search", {}, {"dev/gap": 0.2}, "STOPPED"),
              Trial("c", "confirm", {"__control__": "no_lm"}, {"eval/gap": 0.3}, "TERMINATED"),
              Trial("d", "confirm", {}, {"eval/gap": 0.2}, "ERROR"),
              Trial("e", "confirm", {"seed": 0}, {"eval/gap": 0.15}, "TERMINATED")]
    shown, label = after_run(trials, best)
    assert shown.trial_id == "e" and "confirmation run e" in label
    assert search_gap_metric(trials) == "dev/gap"
    # nothing confirmed, search trials with test numbers: the best trial and the test gap
    alone = [Trial("a", "search", {}, {"eval/gap": 0.1, "dev/gap": 0.1}, "TERMINATED")]
    assert after_run(alone, alone[0]) == (alone[0], "best trial a") and search_gap_metric(alone) == "eval/gap"


def test_trial_table_shows_dev_numbers_when_the_search_skipped_the_test_eval_and_small_floats_whole():
    from xalign.sweep.report import trial_table
    from xalign.sweep.runner import Trial

    trials = [Trial("a", "search", {"optim.lr": 7.253753172998829e-05, "objective.pooler": "last"},
                    {"dev/acc_non_pivot": 0.577, "dev/acc_pivot": 0.68, "dev/gap": 0.103}, "TERMINATED", 422.0)]
    text = trial_table(trials, {"dev/acc_non_pivot": "max"}, ["optim.lr", "objective.pooler"])
    row = text.splitlines()[1]
    assert "57.7" in row and "68.0" in row and "10.3" in row and "7.254e-05" in row and "last" in row
    assert "last dev evaluation's" in text
    trials[0].metrics.update({"eval/acc_non_pivot": 0.5, "eval/acc_pivot": 0.6, "eval/gap": 0.1})
    text = trial_table(trials, {"dev/acc_non_pivot": "max"}, ["optim.lr"])
    assert "50.0" in text.splitlines()[1] and "dev evaluation" not in text


def _eval_folder(folder: Path, hits: dict[tuple[str, str], list[int]]) -> Path:
    """An `xalign eval` results folder: its metrics and one record per item."""
    import json

    folder.mkdir(parents=True)
    metrics, records = {}, []
    for (task, lang), outcomes in hits.items():
        metrics[f"eval/{task}/{lang}/acc"] = sum(outcomes) / len(outcomes)
        metrics[f"eval/{task}/{lang}/n_items"] = float(len(outcomes))
        records += [{"task": task, "lang": lang, "idx": i, "correct": {"none": bool(o)}} for i, o in enumerate(outcomes)]
    (folder / "eval_metrics.json").write_text(json.dumps(metrics))
    (folder / "eval_records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def test_xalign_compare_puts_eval_folders_side_by_side_with_paired_errors(tmp_path, capsys):
    """`xalign compare base=DIR best=DIR best=DIR`: a name twice is two seeds; the differences
    are paired over the items; a bad spec is refused naming it, before anything is read."""
    from xalign.cli import main

    base = _eval_folder(tmp_path / "b", {("xcopa", "en"): [1, 1, 1, 0], ("xcopa", "zh"): [1, 0, 0, 0]})
    s0 = _eval_folder(tmp_path / "s0", {("xcopa", "en"): [1, 1, 0, 0], ("xcopa", "zh"): [1, 1, 1, 0]})
    s1 = _eval_folder(tmp_path / "s1", {("xcopa", "en"): [1, 1, 1, 0], ("xcopa", "zh"): [1, 1, 0, 0]})
    assert main(["compare", f"base={base}", f"best={s0}", f"best={s1}"]) == 0
    lines = {tuple(line.split()[:2]): line for line in capsys.readouterr().out.splitlines()}
    # zh: best's items over its seeds [1, 1, .5, 0] against base [1, 0, 0, 0]: d = [0, 1, .5, 0]
    assert "62.5 ± 17.7" in lines[("xcopa", "zh")] and "+37.5 ± 23.9" in lines[("xcopa", "zh")]
    assert "-12.5 ± 12.5" in lines[("xcopa", "en*")]
    assert main(["compare", "base", f"best={s0}"]) == 1
    assert "'base': expected NAME=FOLDER" in capsys.readouterr().err
    assert main(["compare", f"base={tmp_path}", f"best={s0}"]) == 1
    assert "has no eval_metrics.json and no eval_records.jsonl" in capsys.readouterr().err
