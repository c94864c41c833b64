"""A small real sweep on the session's local Ray cluster: Ray Tune + Optuna trials that are
Ray Train runs, ASHA stopping the weak one, MLflow parent and child runs, the confirmation
phase with a control, then `xalign report` and notebooks/compare_runs.ipynb on the result.

The two search trials run one after the other: TPE with seed 3 samples lr 3e-3 first, then
1e-12 (a learning rate that cannot move the LM loss), so at ASHA's first rung (step 5) the
second trial is behind the first on train/loss_lm and is stopped."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def test_sweep_runs_trials_as_mlflow_children_and_confirms_the_best(small_sweep):
    from mlflow.tracking import MlflowClient

    tmp, stdout, _ = small_sweep
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sweeps").experiment_id
    parents = client.search_runs([exp], filter_string="tags.`xalign.kind` = 'sweep'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert json.loads(parent.data.params["search.objective.temperature"])["float"]["log"] is True
    assert "xalign.best_trial_id" in parent.data.tags and "best/eval/acc_non_pivot" in parent.data.metrics
    assert "base/acc_pivot" in parent.data.metrics                      # the base model, evaluated once
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"best_config.yaml", "trials.json", "sweep", "summary.txt", "report"} <= artifacts
    report_files = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.html", "report/pareto.png", "report/best_accuracy.png"} <= report_files
    assert {"eval/acc_non_pivot", "eval/gap"} <= set(parent.data.metrics)   # the headline, on the parent's row
    assert client.get_experiment(exp).tags["mlflow.experimentKind"] == "custom_model_development"
    children = client.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    phases = sorted(c.data.tags["xalign.phase"] for c in children)
    assert phases == ["confirm", "confirm", "search", "search"]
    assert len({c.data.tags["xalign.trial_id"] for c in children}) == 4  # one child run per trial, no duplicate
    # ASHA stopped the trial whose learning rate cannot move the loss, at its first rung.
    stopped = [c for c in children if c.info.status == "KILLED"]
    assert len(stopped) == 1 and float(stopped[0].data.params["optim.lr"]) == 1e-12
    assert stopped[0].data.tags["xalign.stopped_by"] == "asha" and stopped[0].data.tags["xalign.stopped_at_step"] == "5"
    assert "eval/acc_non_pivot" not in stopped[0].data.metrics          # its final evaluation was skipped
    assert parent.data.metrics["sweep/steps_run"] == 15 and parent.data.metrics["sweep/steps_full"] == 20
    assert parent.data.metrics["sweep/compute_saved"] == pytest.approx(0.25)
    assert "Compute: asha ran 15 of 20 trial steps (25% saved" in stdout
    children = [c for c in children if c.info.status != "KILLED"]
    for child in children:
        assert child.info.status == "FINISHED"
        assert float(child.data.params["optim.lr"]) == 3e-3
        # readable names: the trial's number and the values it was given (or its variant and seed)
        assert re.fullmatch(r"\d+: temperature=[0-9.e-]+ lr=0\.003|confirm \d+: (best|no_contrastive) seed=0",
                            child.info.run_name), child.info.run_name
        assert {"eval/acc_non_pivot", "eval/acc_pivot", "dev/acc", "train/loss", "data/lm/replay_share"} \
            <= set(child.data.metrics)
        assert "base/acc" not in child.data.metrics                     # not re-evaluated per trial
    control = [c for c in children if c.data.tags.get("xalign.variant") == "no_contrastive"]
    assert len(control) == 1 and float(control[0].data.params["objective.contrastive_weight"]) == 0
    searched = [float(c.data.params["objective.temperature"]) for c in [*children, *stopped]
                if c.data.tags["xalign.phase"] == "search"]
    assert all(0.05 <= t <= 0.2 for t in searched) and len(set(searched)) == 2
    assert "Pareto front" in stdout and "base model" in stdout and "no_contrastive (n=1)" in stdout
    assert "mlflow ui --backend-store-uri" in stdout


def test_report_reads_the_sweep_back_from_mlflow(small_sweep):
    tmp, _, _ = small_sweep
    res = subprocess.run([sys.executable, "-m", "xalign.cli", "report", "small", "--out", str(tmp / "report"),
                          f"tracking_uri=sqlite:///{tmp / 'mlflow.db'}", "experiment=sweeps"],
                         capture_output=True, text=True, cwd=tmp)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Best config (ready to run with `xalign train`)" in res.stdout and "objective:" in res.stdout
    assert "Compute: asha ran 15 of 20 trial steps (25% saved" in res.stdout and "STOPPED" in res.stdout
    # the per-language table: base, best and the control, n and a paired SE next to each difference
    table = res.stdout.split("Per task and language", 1)[1]
    header = table.splitlines()[1].split()
    assert header[:5] == ["task", "language", "base", "best", "no_contrastive"] and "n" in header
    assert "paired over the items, from every run's per-item records" in table
    row = next(line for line in table.splitlines() if line.startswith("all tasks") and "non-qaa" in line)
    assert re.search(r" \d+ +[+-]\d+\.\d ± \d+\.\d", row), row            # n, then best - base ± SE
    assert (tmp / "report" / "comparison.txt").is_file()
    plots = sorted(p.name for p in (tmp / "report").glob("*.png"))
    assert "gap_vs_objective_temperature.png" in plots and "best_accuracy.png" in plots and "pareto.png" in plots
    page = tmp / "report" / "report.html"
    assert f"HTML report: {page}" in res.stdout and page.read_text().count("data:image/png;base64,") >= 5
    missing = subprocess.run([sys.executable, "-m", "xalign.cli", "report", "smal",
                              f"tracking_uri=sqlite:///{tmp / 'mlflow.db'}", "experiment=sweeps"],
                             capture_output=True, text=True, cwd=tmp)
    assert missing.returncode == 1 and "no sweep named 'smal'" in missing.stderr and "small" in missing.stderr


def test_compare_runs_notebook_executes_against_the_sweep(small_sweep):
    tmp, _, _ = small_sweep
    notebook = json.loads((REPO / "notebooks" / "compare_runs.ipynb").read_text())
    namespace = {"TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}", "EXPERIMENT": "sweeps", "SWEEP": "small",
                 "MPL_BACKEND": "Agg"}
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), "compare_runs.ipynb", "exec"), namespace)
    assert len(namespace["trials"]) == 4
    assert set(namespace["per_lang"]["lang"]) == {"qaa", "qab", "qac", "qad"}
    assert len(namespace["summary"]) == 3 and namespace["fig"] is not None    # the stopped trial has no eval/
