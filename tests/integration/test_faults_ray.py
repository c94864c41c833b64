"""Faults injected into real runs on the session's local Ray cluster (xalign's CLI in a
subprocess, as users run it): a full disk at checkpoint time, the sweep driver killed and
resumed, and a load sweep of 32 short trials, some of which hit a NaN loss. Each test
records the faults it injected; the totals are printed at the end of the session."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def xalign(args: list[str], *, env: dict, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xalign.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=timeout)


def cluster_env(ray_cluster) -> dict:
    return {**os.environ, "RAY_ADDRESS": ray_cluster.address_info["gcs_address"]}


def world(tiny_world_overrides) -> list[str]:
    return [f"data.world.{o}" for o in tiny_world_overrides]


def runs_in(db: Path, experiment: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], max_results=1000) if exp else []


def count_runs(db: Path, status: str, phase: str) -> int:
    """Child runs of a sweep in ``status``, read straight from the SQLite file (no MLflow
    import in the polling thread; a file being written is retried by the caller)."""
    if not db.is_file():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return con.execute("select count(*) from runs r join tags t on r.run_uuid = t.run_uuid "
                               "where t.key = 'xalign.phase' and t.value = ? and r.status = ?",
                               (phase, status)).fetchone()[0]
    except sqlite3.Error:
        return 0


# --- a full disk at checkpoint time ------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A folder backed by a tmpfs of a chosen size (root and mount rights needed)."""
    mounted = []

    def make(size_bytes: int) -> Path:
        path = tmp_path / "small_disk"
        path.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here to fill a disk ({proc.stderr.strip()})")
        mounted.append(path)
        return path

    yield make
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_full_disk_at_checkpoint_time_fails_clearly_and_keeps_the_previous_checkpoint(
        ray_cluster, tiny_world, tiny_world_overrides, tmp_path, small_disk, record_fault):
    import torch

    from xalign.config import from_overrides
    from xalign.config.schema import RunConfig
    from xalign.optim import Dist
    from xalign.train.setup import setup_run

    overrides = world(tiny_world_overrides) + [
        "optim.batch_size=4", "optim.max_steps=20", "data.max_length=64", "eval.tasks=[]",
        "checkpoint.every_n_steps=5", "checkpoint.keep=1", "checkpoint.max_failures=1", "tracking.enabled=false"]
    cfg = from_overrides(RunConfig, overrides)
    run = setup_run(cfg, str(tiny_world[1]), Dist(), torch.device("cpu"))
    run.step(0)                                     # (Adam's state exists after a first step)
    run.save(tmp_path / "sizing", step=1)          # the same save code: how big one checkpoint is
    size = sum(f.stat().st_size for f in (tmp_path / "sizing").rglob("*") if f.is_file())
    disk = small_disk(int(size * 1.3))   # room for one checkpoint, not for a second

    proc = xalign(["train", str(REPO / "configs/runs/afp-synthetic.yaml"), *overrides, f"checkpoint.storage_path={disk}",
                   "tracking.run_name=full-disk"], env=cluster_env(ray_cluster), cwd=tmp_path, timeout=600)
    assert proc.returncode == 1, (proc.stdout + proc.stderr)[-5000:]
    # The driver ends with one message, not its stack (--debug shows it); the workers' own
    # logs, which Ray streams, may carry theirs. Either the checkpoint itself or Ray's record
    # of it is what no longer fits; the message names the disk and the place.
    ours = [line for line in proc.stderr.splitlines() if line.startswith("xalign train: error:")]
    assert len(ours) == 1 and "No space left on device" in ours[0] and str(disk / "full-disk") in ours[0], ours
    assert "xalign/cli.py" not in proc.stderr
    if "could not write the checkpoint" in ours[0]:
        assert "The previous checkpoint (step 5) is intact" in ours[0]

    # What was written before the disk filled is intact: the step-5 checkpoint loads and
    # resumes at step 5.
    again = setup_run(cfg, str(tiny_world[1]), Dist(), torch.device("cpu"))
    assert again.restore(disk / "full-disk" / "step_0000005") == 5
    record_fault("disk full at checkpoint time (clear error, previous checkpoint intact)", survived=True)


# --- a cluster without the GPUs a run needs -------------------------------------------------

@pytest.mark.parametrize("command", ["train", "sweep"])
def test_a_run_needing_gpus_the_cluster_lacks_is_refused_before_anything_starts(
        command, ray_cluster, tiny_world, tiny_world_overrides, tmp_path, record_bad_input):
    file = REPO / "configs" / ("runs/afp-synthetic.yaml" if command == "train" else "sweeps/demo.yaml")
    proc = xalign([command, str(file), *world(tiny_world_overrides), "scaling.use_gpu=true", "scaling.gpus_per_worker=1",
                   "scaling.num_workers=2", f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
                   f"checkpoint.storage_path={tmp_path / 'results'}"], env=cluster_env(ray_cluster), cwd=tmp_path,
                  timeout=300)
    address = ray_cluster.address_info["gcs_address"]
    expected = f"2 workers x 1 GPUs = 2 GPUs but the Ray cluster at {address} has 0"
    refused = proc.returncode == 1 and expected in proc.stderr
    record_bad_input(f"ray: {command} needs 2 GPUs on a cluster with none", refused=refused)
    assert refused, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert runs_in(tmp_path / "mlflow.db", "xalign") == []          # no MLflow run was opened
    assert not list((tmp_path / "results").rglob("step_*"))


# --- the sweep driver killed, then --resume -------------------------------------------------

def sweep_file(tmp: Path, body: str) -> Path:
    path = tmp / "sweep.yaml"
    path.write_text(f"extends: {REPO / 'configs' / 'runs' / 'afp-synthetic.yaml'}\n{body}")
    return path


def test_a_killed_sweep_driver_resumes_without_rerunning_losing_or_duplicating_trials(
        ray_cluster, tiny_world, tiny_world_overrides, tmp_path, record_fault):
    db = tmp_path / "mlflow.db"
    file = sweep_file(tmp_path, f"""\
name: killed
optim: {{max_steps: 12, batch_size: 4, lr: 1.0e-3}}
data: {{max_length: 64}}
eval: {{tasks: []}}
checkpoint: {{every_n_steps: 6, keep: 1}}
tracking: {{tracking_uri: "sqlite:///{db}", experiment: killed}}
search:
  objective.temperature: {{float: {{low: 0.05, high: 0.2, log: true}}}}
tune: {{metrics: {{train/loss: min}}, num_samples: 2, max_concurrent_trials: 1, seed: 1}}
""")
    args = ["sweep", str(file), *world(tiny_world_overrides), f"checkpoint.storage_path={tmp_path / 'results'}"]
    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen([sys.executable, "-m", "xalign.cli", *args], stdout=log, stderr=subprocess.STDOUT,
                              env=cluster_env(ray_cluster), cwd=tmp_path, start_new_session=True)
    try:
        # Kill once one trial has finished and the next is running.
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and driver.poll() is None:
            if count_runs(db, "FINISHED", "search") >= 1 and count_runs(db, "RUNNING", "search") >= 1:
                break
            time.sleep(0.5)
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-4000:]
        os.killpg(driver.pid, signal.SIGKILL)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    finished_before = {r.data.tags["xalign.trial_id"]: r for r in runs_in(db, "killed")
                       if r.data.tags.get("xalign.phase") == "search" and r.info.status == "FINISHED"}
    assert finished_before

    proc = xalign([*args, "--resume"], env=cluster_env(ray_cluster), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    runs = runs_in(db, "killed")
    parents = [r for r in runs if r.data.tags.get("xalign.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("xalign.phase") == "search" and "xalign.orphaned" not in r.data.tags]
    # A trial started in the second before the killed driver's Tune saved its state is
    # unknown to Tune: --resume runs another in its place and ends the old child run KILLED.
    orphans = [r for r in runs if "xalign.orphaned" in r.data.tags]
    assert all(r.info.status == "KILLED" and r.data.tags["xalign.trial_id"] not in
               {c.data.tags["xalign.trial_id"] for c in children} for r in orphans)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    trial_ids = [r.data.tags["xalign.trial_id"] for r in children]
    assert len(children) == 2 and len(set(trial_ids)) == 2                # none lost, none duplicated
    assert all(r.info.status == "FINISHED" for r in children)
    for trial_id, before in finished_before.items():                       # finished trials not re-run
        after = next(r for r in children if r.data.tags["xalign.trial_id"] == trial_id)
        assert after.info.end_time == before.info.end_time
    trials = json.loads((tmp_path / "results" / "killed" / "xalign_sweep.json").read_text())
    assert trials["parent_run_id"] == parents[0].info.run_id
    record_fault("sweep driver SIGKILLed mid-sweep, then --resume" +
                 (f" ({len(orphans)} trial Tune had not saved yet ran again)" if orphans else ""),
                 survived=True, runs_lost=2 - len(children))


# --- a load sweep of 32 short trials, with NaN trials among them --------------------------

def test_a_32_trial_sweep_accounts_for_every_trial_and_nan_trials_fail_clearly(
        ray_cluster, tiny_world, tiny_world_overrides, tmp_path, record_fault):
    import psutil

    db = tmp_path / "mlflow.db"
    trials = 32
    # lr 1e30 blows the weights up at the first step: a NaN gradient, then a NaN loss.
    file = sweep_file(tmp_path, f"""\
name: load
optim: {{max_steps: 3, batch_size: 4, warmup_ratio: 0}}
data: {{max_length: 32}}
eval: {{tasks: []}}
checkpoint: {{every_n_steps: 0, keep: 1}}
scaling: {{cpus_per_worker: 0.5}}
tracking: {{tracking_uri: "sqlite:///{db}", experiment: load}}
search:
  optim.lr: {{categorical: {{choices: [1.0e-3, 1.0e+30]}}}}
tune: {{metrics: {{train/loss: min}}, num_samples: {trials}, searcher: random, seed: 0}}
""")
    args = ["sweep", str(file), *world(tiny_world_overrides), f"checkpoint.storage_path={tmp_path / 'results'}"]
    driver = subprocess.Popen([sys.executable, "-m", "xalign.cli", *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=cluster_env(ray_cluster), cwd=tmp_path,
                              start_new_session=True)
    rss: list[tuple[float, int]] = []
    stop = threading.Event()

    def sample() -> None:
        process = psutil.Process(driver.pid)
        while not stop.is_set():
            try:
                rss.append((time.monotonic(), process.memory_info().rss))
            except psutil.Error:
                return
            time.sleep(1.0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        stdout, stderr = driver.communicate(timeout=1500)
    finally:
        stop.set()
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    assert driver.returncode == 0, stdout[-3000:] + stderr[-5000:]

    runs = runs_in(db, "load")
    parent = [r for r in runs if r.data.tags.get("xalign.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("xalign.phase") == "search"]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    assert len(children) == trials and len({r.data.tags["xalign.trial_id"] for r in children}) == trials
    nan = [r for r in children if float(r.data.params["optim.lr"]) > 1]
    good = [r for r in children if float(r.data.params["optim.lr"]) < 1]
    assert nan and good
    assert all(r.info.status == "FAILED" for r in nan)
    assert all("non-finite loss or gradient at step" in r.data.tags["xalign.error"] and "grad_norm" in
               r.data.tags["xalign.error"] for r in nan)
    assert all(r.info.status == "FINISHED" and r.data.metrics["step"] == 3 for r in good)

    # Tune's own record agrees: every trial is there, ERROR exactly for the NaN ones.
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(str(tmp_path / "results" / "load" / "search"))
    statuses = [t.status for t in analysis.trials]
    assert len(statuses) == trials and statuses.count("ERROR") == len(nan)

    # The driver's memory stays flat: the last quarter of the run vs the second quarter.
    assert len(rss) >= 8
    q = len(rss) // 4
    median = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    early, late = median([m for _, m in rss[q: 2 * q]]), median([m for _, m in rss[3 * q:]])
    print(f"\nload sweep: {trials} trials ({len(nan)} NaN) in {rss[-1][0] - rss[0][0]:.0f}s; driver RSS "
          f"{early / 2**20:.0f} MiB (2nd quarter) -> {late / 2**20:.0f} MiB (last quarter)")
    assert late - early < 64 * 2**20
    record_fault(f"NaN loss in {len(nan)} of {trials} trials of a load sweep (trials failed clearly, sweep went on)",
                 survived=True, runs_lost=trials - len(children))


# --- the MLflow server stopped and restarted during a run ------------------------------------

def test_an_mlflow_outage_during_a_run_loses_no_metrics_and_no_secret_reaches_the_store(
        ray_cluster, tiny_world, tiny_world_overrides, tmp_path, record_fault):
    from mlflow.tracking import MlflowClient

    from tests.support.processes import MlflowServer

    server = MlflowServer(tmp_path / "mlflow").start()
    secret = "hf_planted_secret_7d1e0c9a"
    env = {**cluster_env(ray_cluster), "HF_TOKEN": secret, "MY_SERVICE_PASSWORD": secret + "_pw"}
    overrides = world(tiny_world_overrides) + [
        "optim.batch_size=4", "optim.max_steps=200", "data.max_length=64", "eval.tasks=[]",
        "checkpoint.every_n_steps=20", "checkpoint.keep=1", "tracking.log_every_n_steps=5",
        f"tracking.tracking_uri={server.uri}", "tracking.experiment=outage", "tracking.run_name=outage",
        f"checkpoint.storage_path={tmp_path / 'results'}"]
    outage: list[float] = []

    def stop_then_restart() -> None:
        deadline = time.monotonic() + 300
        while not list((tmp_path / "results").glob("outage/step_0000020")) and time.monotonic() < deadline:
            time.sleep(0.05)
        start = time.monotonic()
        server.stop()
        time.sleep(8)            # steps go on logging meanwhile
        server.start()
        outage.append(time.monotonic() - start)

    chaos = threading.Thread(target=stop_then_restart, daemon=True)
    chaos.start()
    try:
        proc = xalign(["train", str(REPO / "configs/runs/afp-synthetic.yaml"), *overrides], env=env, cwd=tmp_path, timeout=600)
        chaos.join(timeout=320)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        assert outage, "the server was never stopped"
        client = MlflowClient(server.uri)
        run = client.search_runs([client.get_experiment_by_name("outage").experiment_id])[0]
        assert run.info.status == "FINISHED"
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))
        assert steps == list(range(5, 201, 5))          # every logged step arrived, once

        # No secret from the environment in the run's params, tags or artifacts.
        texts = [*run.data.params.values(), *run.data.tags.values()]
        pending = list(client.list_artifacts(run.info.run_id))
        while pending:
            item = pending.pop()
            if item.is_dir:
                pending += client.list_artifacts(run.info.run_id, item.path)
            else:
                texts.append(Path(client.download_artifacts(run.info.run_id, item.path, str(tmp_path))).read_text(
                    errors="replace"))
        assert texts and not [t for t in texts if secret in t]
    finally:
        server.stop()
    record_fault(f"MLflow server down for {outage[0]:.0f}s mid-run (every metric arrived)", survived=True)
