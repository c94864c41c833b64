"""`xalign train` on a local 2-CPU Ray cluster with 2 workers: logs to MLflow, survives a
killed worker by resuming from its last checkpoint, finishes with every step, and ends at
the loss of an uninterrupted run with the same seed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def registered(run_dir: Path, name: str) -> bool:
    """Ray Train's controller has registered checkpoint ``name`` (its snapshot lists it): a
    restart resumes from it. A checkpoint folder alone is not enough: the controller takes
    a worker's report only when it polls (every 2 s), and steps here take ~50 ms."""
    import json

    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):
        return False
    return any(r.get("checkpoint_dir_name") == name for r in snapshot.get("checkpoint_results", []))


def kill_a_worker_after(checkpoint: str, run_dir: Path, killed: list, stop: threading.Event, address: str) -> None:
    """Once ``checkpoint`` is registered, SIGKILL one live RayTrainWorker of this cluster
    (named by address: other Ray instances may run on the machine)."""
    from ray.util.state import list_actors

    while not stop.is_set():
        if registered(run_dir, checkpoint):
            actors = list_actors(address=address,
                                 filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
            if actors:
                os.kill(actors[0].pid, signal.SIGKILL)
                killed.append(actors[0].pid)
                return
        time.sleep(0.05)


def test_train_two_workers_logs_to_mlflow_and_resumes_after_a_worker_is_killed(
        ray_cluster, tiny_world, tiny_world_overrides, tmp_path, record_fault):
    storage = tmp_path / "ray_results"
    db = tmp_path / "mlflow.db"
    overrides = [f"data.world.{o}" for o in tiny_world_overrides] + [
        "scaling.num_workers=2", "optim.batch_size=4", "optim.max_steps=120", "optim.lr=1e-3",
        "data.max_length=64", "checkpoint.every_n_steps=20", "checkpoint.keep=2", "checkpoint.max_failures=2",
        "tracking.log_every_n_steps=10", f"tracking.tracking_uri=sqlite:///{db}",
        f"checkpoint.storage_path={storage}", "tracking.run_name=kill-test", "tracking.experiment=it"]
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.address_info["gcs_address"]}
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=kill_a_worker_after,
                              args=("step_0000040", storage / "kill-test", killed, stop,
                                    ray_cluster.address_info["gcs_address"]), daemon=True)
    killer.start()
    try:
        proc = subprocess.run([sys.executable, "-m", "xalign.cli", "train", str(REPO / "configs/runs/afp-synthetic.yaml"),
                               *overrides], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    finally:
        stop.set()
        killer.join(timeout=5)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert killed, "the run ended before a worker could be killed"
    assert "Finished 120 steps" in proc.stdout

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    run = client.search_runs([client.get_experiment_by_name("it").experiment_id])[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "kill-test"
    assert run.data.params["scaling.num_workers"] == "2" and run.data.params["objective.pooler"] == "mean"
    assert run.data.metrics["step"] == 120
    assert run.data.metrics["resumed_from_step"] >= 20          # the restarted workers resumed
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert max(m.step for m in history) == 120
    assert "config.yaml" in [a.path for a in client.list_artifacts(run.info.run_id)]

    # Periodic dev evaluations rank the checkpoints; the final test evaluation of the best one
    # and of the starting model ("base/") land in the same run, with records and plots.
    metrics = run.data.metrics
    assert 0 <= metrics["dev/acc"] <= 1 and 0 <= metrics["eval/acc"] <= 1 and 0 <= metrics["base/acc"] <= 1
    assert {"eval/facts/qaa/acc", "eval/xcopa/gap", "align/retrieval/top1", "align/mexa"} <= set(metrics)
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "eval")]
    assert {"eval/eval_records.jsonl", "eval/base_records.jsonl", "eval/eval_accuracy.png"} <= set(artifacts)
    assert "[eval]" in proc.stdout and "gap" in proc.stdout

    checkpoints = sorted(p.name for p in (storage / "kill-test").glob("step_*"))
    # keep=2 best by dev accuracy, plus the latest, which Ray never deletes
    assert checkpoints[-1] == "step_0000120" and len(checkpoints) <= 3
    assert (storage / "kill-test" / "step_0000120" / "model" / "model.safetensors").is_file()

    # The same run uninterrupted (without the evaluations, which do not touch training): the
    # resumed run ends at the same loss. Tolerance: 1e-4 relative (the same ranks, the same
    # gloo reductions; checkpoints hold fp32 weights, optimizer and RNG state exactly).
    reference = subprocess.run([sys.executable, "-m", "xalign.cli", "train", str(REPO / "configs/runs/afp-synthetic.yaml"),
                                *[o for o in overrides if not o.startswith("tracking.run_name")],
                                "tracking.run_name=uninterrupted", "eval.tasks=[]"],
                               capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert reference.returncode == 0, reference.stdout[-3000:] + reference.stderr[-5000:]
    straight = client.search_runs([client.get_experiment_by_name("it").experiment_id],
                                  filter_string="attributes.run_name = 'uninterrupted'")[0]
    final = {m.step: m.value for m in history}
    expected = {m.step: m.value for m in client.get_metric_history(straight.info.run_id, "train/loss")}
    assert final[120] == pytest.approx(expected[120], rel=1e-4)
    assert straight.data.metrics["resumed_from_step"] == 0
    record_fault("training worker SIGKILLed mid-run (resumed, all steps, final loss = uninterrupted run)",
                 survived=True)
