"""`xalign train` under ``scaling.strategy: fsdp`` on the session's Ray cluster: 2 CPU
workers (gloo) on the tiny synthetic world's model, early exit at layer 1, the learned
temperature on. One run of 4 steps writes sharded checkpoints under Ray Train; a second run
of the same name continues it to 6 steps from the latest one (how a stopped run resumes);
each ends with the final evaluation. Two trainings only: each costs ~30 s of Ray start-up
on 2 cores."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.distributed]

REPO = Path(__file__).resolve().parents[2]
START_TEMPERATURE, LR = 0.1, 1e-2


def objective_state(checkpoint: Path) -> float:
    """The learned temperature's parameter (log 1/t) in a checkpoint's trainer state."""
    import torch

    state = torch.load(checkpoint / "trainer_state.pt", weights_only=True, map_location="cpu")
    return float(state["objective"]["log_scale"])


def test_fsdp_run_checkpoints_sharded_resumes_and_evaluates(ray_cluster, tiny_world, tiny_world_overrides, tmp_path):
    from mlflow.tracking import MlflowClient
    from transformers import AutoModelForCausalLM

    storage, db = tmp_path / "ray_results", tmp_path / "mlflow.db"
    overrides = [f"data.world.{o}" for o in tiny_world_overrides] + [
        "scaling.num_workers=2", "scaling.strategy=fsdp", "objective.learn_temperature=true",
        f"objective.temperature={START_TEMPERATURE}", "objective.layer=1", "objective.early_exit=true",
        "optim.batch_size=4", f"optim.lr={LR}", "optim.schedule=constant", "optim.warmup_ratio=0",
        "data.max_length=64", "checkpoint.every_n_steps=2", "checkpoint.keep=3", "checkpoint.max_failures=0",
        "eval.max_items=10", "eval.every_n_steps=0", "tracking.log_every_n_steps=1",
        f"tracking.tracking_uri=sqlite:///{db}", f"checkpoint.storage_path={storage}",
        "tracking.run_name=fsdp-test", "tracking.experiment=it-fsdp"]
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.address_info["gcs_address"]}

    def train(steps: int) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "xalign.cli", "train", str(REPO / "configs/runs/afp-synthetic.yaml"),
                               *overrides, f"optim.max_steps={steps}"],
                              capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        assert f"Finished {steps} steps" in proc.stdout
        return proc

    first = train(4)
    assert "fsdp x 2 worker(s)" in first.stdout + first.stderr          # the plan, printed before Ray starts
    run_dir = storage / "fsdp-test"
    for step in (2, 4):
        checkpoint = run_dir / f"step_{step:07d}"
        shards = sorted(p.name for p in (checkpoint / "sharded").glob("*.distcp"))
        assert len(shards) == 2, shards                                  # one file per worker
        assert (checkpoint / "sharded" / ".metadata").is_file()
        assert (checkpoint / "model" / "model.safetensors").is_file()   # rank 0's consolidated model
    # the learned temperature trains under fsdp (all-reduced like a ddp parameter) and is checkpointed
    start = math.log(1 / START_TEMPERATURE)
    at2, at4 = (objective_state(run_dir / f"step_{s:07d}") for s in (2, 4))
    assert at2 != pytest.approx(start, abs=1e-6) and at4 != pytest.approx(at2, abs=1e-6)

    # the consolidated model loads like any other and is the trained one, not the world's base model
    import torch

    trained = AutoModelForCausalLM.from_pretrained(run_dir / "step_0000004" / "model")
    base = AutoModelForCausalLM.from_pretrained(tiny_world[1] / "base_model")
    assert trained.config.num_hidden_layers == base.config.num_hidden_layers
    assert all(torch.isfinite(p).all() for p in trained.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), base.state_dict().values()))

    train(6)                                                    # the same name: resumes at step 4
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("it-fsdp").experiment_id
    runs = client.search_runs([experiment], order_by=["attributes.start_time DESC"])
    resumed = runs[0]
    assert resumed.info.status == "FINISHED"
    metrics = resumed.data.metrics
    assert metrics["resumed_from_step"] == 4 and metrics["step"] == 6
    # the final evaluation ran on the consolidated model (test tasks and the base model)
    assert 0 <= metrics["eval/acc"] <= 1 and 0 <= metrics["base/acc"] <= 1
    assert (run_dir / "step_0000006" / "model" / "model.safetensors").is_file()
    # the temperature went on from the checkpoint's value (one more step), not from the start
    temperatures = {m.step: m.value for m in client.get_metric_history(resumed.info.run_id, "train/temperature")}
    assert 5 in temperatures and 6 in temperatures, sorted(temperatures)
    at5 = math.log(1 / temperatures[5])
    assert abs(at5 - at4) < abs(at4 - start), (start, at4, at5)
    assert objective_state(run_dir / "step_0000006") != pytest.approx(at4, abs=1e-6)
