"""The multi-node path of cluster/README.md section 2, for real, on this one machine: a Ray
head and a second Ray node started with `ray start --block` (token authentication on, the
dashboard on 127.0.0.1, every port chosen free so that the session's own Ray instance can
run next to them, each node with its own temp dir), an MLflow server on SQLite, and the
demo sweep submitted with `ray job submit --working-dir`.

- a small demo sweep succeeds, its log streams back to `ray job submit`, its parent and
  child runs reach MLflow FINISHED, its trials ran on both nodes (the runs' `xalign.node_id`
  tags), and every trial's checkpoint is in the shared storage path;
- a checkpoint folder that only the head node has is refused before any trial, with
  xalign's message: the second node runs in its own mount namespace, where that folder is
  an empty tmpfs;
- `ray job stop` stops a running sweep: its MLflow runs end KILLED, the job ends STOPPED, and its trials' actors (on
  both nodes) and placement groups are gone within a minute.

The nodes are stopped by their process-group ids (never `ray stop`, which would stop every
Ray instance of the machine)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.processes import MlflowServer, free_ports, stop_session

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent            # the venv's bin: ray, xalign, python
CPUS_PER_NODE = 2
#: One trial's worker holds 1.5 CPUs of a 2-CPU node, so two trials at once cannot share a
#: node: the second one has to run on the other node.
CPUS_PER_WORKER = 1.5


@dataclass
class Cluster:
    base: Path                     # short: Ray's socket paths are length-limited
    gcs_port: int
    dashboard_port: int
    token: str
    env: dict                      # for `ray` commands: the token, the venv first on PATH
    head_local: Path               # on node 2, an empty tmpfs instead of this folder
    mlflow: MlflowServer
    xalign_home: Path              # the session's, with the tiny world the sweeps use
    procs: dict = field(default_factory=dict)

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}

    def logs(self) -> str:
        return "\n".join(f"--- {name}.log ---\n{(self.base / f'{name}.log').read_text(errors='replace')[-3000:]}"
                         for name in self.procs)

    def worker_log(self, pid) -> str:
        """The end of the log files of the Ray worker process ``pid`` (either node)."""
        files = sorted(self.base.glob(f"*/session_*/logs/worker-*-{pid}.*"))
        return "\n".join(f"--- {f.name} ---\n{f.read_text(errors='replace')[-2000:]}" for f in files)

    def jobs(self):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.dashboard, headers=self.headers)

    def state(self):
        from ray.util.state.api import StateApiClient

        return StateApiClient(address=self.dashboard, headers=self.headers)

    def alive(self, resource: str, state: str = "ALIVE", **filters) -> list:
        """Ray's state API (with the token): ``resource`` entries in ``state``."""
        from ray.util.state.common import ListApiOptions, StateResource

        options = ListApiOptions(limit=10000, detail=True, filters=[("state", "=", state),
                                                                    *((k, "=", v) for k, v in filters.items())])
        return self.state().list(StateResource(resource), options=options, raise_on_missing_output=False)

    def ray(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "ray"), *args], capture_output=True, text=True, env=self.env,
                              cwd=REPO, timeout=timeout)


def _can_unshare_mounts(folder: Path) -> str:
    """'' when this process may mount a tmpfs in a private mount namespace, else why not."""
    if not shutil.which("unshare"):
        return "no unshare command"
    try:
        proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                               'mount -t tmpfs tmpfs "$0"', str(folder)], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return "" if proc.returncode == 0 else (proc.stderr.strip() or f"exit status {proc.returncode}")


def _wait_for_port(port: int, procs: dict, cluster: Cluster, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, proc in procs.items():
            assert proc.poll() is None, f"ray start ({name}) exited {proc.returncode}:\n{cluster.logs()}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout}s:\n{cluster.logs()}")


@pytest.fixture(scope="module")
def cluster(xalign_home, tmp_path_factory, request):
    """A Ray head and a second Ray node (2 CPUs each) on this machine, token auth on, and an
    MLflow server; the second node in its own mount namespace where ``head_local`` is an
    empty tmpfs. The tiny world (in XALIGN_HOME, where the sweeps find it) is built while
    the nodes start."""
    base = Path(tempfile.mkdtemp(prefix="xa-mn-", dir="/tmp"))
    head_local = base / "head_local"
    head_local.mkdir()
    why = _can_unshare_mounts(head_local)
    if why:
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(f"cannot give the second Ray node its own mount namespace (unshare --mount, mount -t tmpfs; "
                    f"root needed): {why}")
    (head_local / "only-on-the-head").write_text("x")
    token = secrets.token_hex(32)      # the format `ray get-auth-token --generate` writes
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_TMPDIR", "RAY_AUTH_TOKEN_PATH",
                        "MLFLOW_TRACKING_URI")}
    env.update(PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token,
               RAY_USAGE_STATS_ENABLED="0",
               # SIGTERM stops a node at once (Ray's default first drains it for up to 30s,
               # through a GCS that the same SIGTERM to the process group has stopped).
               RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0")
    (gcs, dashboard, client_server, head_agent, head_agent_grpc, head_runtime_env, head_metrics,
     agent, agent_grpc, runtime_env, metrics) = free_ports(11)
    common = ["--block", "--node-ip-address=127.0.0.1", f"--num-cpus={CPUS_PER_NODE}", "--num-gpus=0",
              "--min-worker-port=0", "--max-worker-port=0", "--disable-usage-stats"]  # worker ports: random
    head = [str(BIN / "ray"), "start", "--head", *common, f"--port={gcs}", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}", f"--ray-client-server-port={client_server}",
            f"--dashboard-agent-listen-port={head_agent}", f"--dashboard-agent-grpc-port={head_agent_grpc}",
            f"--runtime-env-agent-port={head_runtime_env}", f"--metrics-export-port={head_metrics}",
            f"--temp-dir={base / 'head'}"]
    node2 = [str(BIN / "ray"), "start", f"--address=127.0.0.1:{gcs}", *common,
             f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
             f"--runtime-env-agent-port={runtime_env}", f"--metrics-export-port={metrics}",
             f"--temp-dir={base / 'node2'}"]
    # Node 2 (and every worker it starts) sees an empty tmpfs at head_local, the rest of the
    # file system as the head does.
    node2 = ["unshare", "--mount", "--propagation", "private", "sh", "-c", 'mount -t tmpfs tmpfs "$0" && exec "$@"',
             str(head_local), *node2]
    c = Cluster(base, gcs, dashboard, token, env, head_local, MlflowServer(tmp_path_factory.mktemp("mn-mlflow")),
                xalign_home)

    def start(name: str, command: list[str]) -> None:
        with open(base / f"{name}.log", "wb") as log:
            c.procs[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=base,
                                             start_new_session=True)

    started = time.monotonic()
    try:
        start("head", head)
        _wait_for_port(gcs, c.procs, c, timeout=90)
        start("node2", node2)
        c.mlflow.start()                                  # meanwhile the nodes come up
        request.getfixturevalue("tiny_world")
        deadline, nodes = time.monotonic() + 120, []
        while time.monotonic() < deadline:
            for name, proc in c.procs.items():
                assert proc.poll() is None, f"ray start ({name}) exited {proc.returncode}:\n{c.logs()}"
            try:
                nodes = c.alive("nodes")
            except Exception:   # noqa: BLE001  (the dashboard is not up yet)
                nodes = []
            if len(nodes) == 2:
                break
            time.sleep(0.5)
        assert len(nodes) == 2, f"{len(nodes)} alive Ray nodes after 120s:\n{c.logs()}"
        print(f"\n2-node Ray cluster and MLflow server up in {time.monotonic() - started:.0f}s "
              f"(dashboard {c.dashboard})")
        yield c
    finally:
        for name in ("node2", "head"):
            if name in c.procs:
                stop_session(c.procs[name])
        c.mlflow.stop()
        shutil.rmtree(base, ignore_errors=True)


def overrides(c: Cluster, tiny_world_overrides, *, name: str, storage: Path, steps: int,
              evaluate: bool = True) -> list[str]:
    """The demo sweep made small: the tiny world of tests/conftest.py, 2 trials at once
    (one per node), no confirmation phase; one evaluation task on few items, or none (the
    objective then the training loss)."""
    every = min(steps, 3) if steps < 100 else 0      # a long run (to be stopped): no periodic checkpoints
    return [f"data.world.{o}" for o in tiny_world_overrides] + [
        f"name={name}", f"tracking.tracking_uri={c.mlflow.uri}", f"tracking.experiment={name}",
        f"checkpoint.storage_path={storage}", "tune.num_samples=2", "confirm.seeds=[]",
        f"scaling.cpus_per_worker={CPUS_PER_WORKER}", f"optim.max_steps={steps}", "optim.batch_size=4",
        "data.max_length=32", f"checkpoint.every_n_steps={every}", "checkpoint.keep=1",
        *(["eval.tasks=[facts]", "eval.max_items=8", f"eval.every_n_steps={every}"] if evaluate else
          ["eval.tasks=[]", "tune.metrics={train/loss: min}"])]


def submit(c: Cluster, sweep_args: list[str], *extra: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`ray job submit` of `xalign sweep configs/sweeps/demo.yaml ...`, this checkout as the working
    directory; retried while the head's job agent is not registered yet."""
    # No RAY_ADDRESS here: the driver gives it to the job's processes itself (for Ray Train's
    # placement-group cleaner, which otherwise gives up when another Ray instance runs on
    # the machine, as the session's does, and leaks a stopped trial's CPUs).
    runtime_env = {"env_vars": {"XALIGN_HOME": str(c.xalign_home), "HF_HUB_OFFLINE": "1",
                                "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}}
    args = ["job", "submit", "--address", c.dashboard, "--working-dir", str(REPO),
            "--runtime-env-json", json.dumps(runtime_env), *extra, "--", "xalign", "sweep", "configs/sweeps/demo.yaml",
            *sweep_args]
    deadline = time.monotonic() + 60
    while True:
        proc = c.ray(*args, timeout=timeout)
        if "No available agent" not in proc.stdout + proc.stderr or time.monotonic() > deadline:
            return proc
        time.sleep(2)


def mlflow_runs(c: Cluster, experiment: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(c.mlflow.uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], max_results=1000) if exp else []


def test_a_sweep_submitted_as_a_ray_job_runs_its_trials_on_both_nodes(cluster, tiny_world_overrides):
    c = cluster
    # Token authentication is on: the job API refuses a request without the token.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{c.dashboard}/api/jobs/", timeout=10)
    assert refused.value.code == 401

    storage = c.base / "shared" / "results"      # outside head_local: the same folder on both nodes
    submission = f"mn-ok-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    proc = submit(c, overrides(c, tiny_world_overrides, name="mn-ok", storage=storage, steps=6),
                  "--submission-id", submission)
    seconds = time.monotonic() - started
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:] + "\n" + c.logs()
    assert f"Job '{submission}' succeeded" in out
    assert c.jobs().get_job_status(submission).value == "SUCCEEDED"
    status = c.ray("job", "status", "--address", c.dashboard, submission)
    assert status.returncode == 0 and f"Job '{submission}' succeeded" in status.stdout, status.stdout + status.stderr

    runs = mlflow_runs(c, "mn-ok")
    parents = [r for r in runs if r.data.tags.get("xalign.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("xalign.phase") == "search"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED", [(r.info.run_name, r.info.status) for r in runs]
    parent = parents[0].info.run_id
    # The sweep's own output streamed back through `ray job submit`: its summary names the
    # trials and the parent run the server has.
    assert "Sweep mn-ok: 2 trials" in out and f"parent run {parent}" in out, out[-4000:]
    assert len(children) == 2 and len({r.data.tags["xalign.trial_id"] for r in children}) == 2
    assert all(r.data.tags["mlflow.parentRunId"] == parent and r.info.status == "FINISHED" for r in children)
    assert all(r.data.metrics.get("step") == 6 and "eval/acc_pivot" in r.data.metrics for r in children)

    # One trial on each node: rank 0 tagged its run with the node it ran on. (Both nodes
    # have this machine's IP: Ray replaces --node-ip-address=127.0.0.1 by the routable one.)
    nodes = c.alive("nodes")
    assert {r.data.tags.get("xalign.node_id") for r in children} == {n.node_id for n in nodes}, \
        ([r.data.tags.get("xalign.node_id") for r in children], [n.node_id for n in nodes])
    assert {r.data.tags.get("xalign.node_ip") for r in children} == {n.node_ip for n in nodes}

    # Every trial's last checkpoint (step 6, keep=1) is in the storage path, whichever node wrote it.
    for run in children:
        trial = run.data.tags["xalign.trial_id"]
        found = list((storage / "mn-ok" / "trials").glob(f"*{trial}*/step_0000006/model"))
        assert len(found) == 1 and any(found[0].iterdir()), (trial, sorted(map(str, storage.rglob("step_*"))))
    print(f"\nmulti-node sweep: 2 trials on 2 nodes, job {submission} in {seconds:.0f}s")


def test_a_storage_folder_only_the_head_node_has_is_refused_before_any_trial(cluster, tiny_world_overrides):
    c = cluster
    submission = f"mn-local-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    proc = submit(c, overrides(c, tiny_world_overrides, name="mn-local", storage=c.head_local, steps=6),
                  "--submission-id", submission)
    seconds = time.monotonic() - started
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and f"Job '{submission}' failed" in out, out[-6000:]
    assert c.jobs().get_job_status(submission).value == "FAILED"
    # The driver's log (which `ray job submit` streamed) ends with xalign's one-line error.
    errors = [line for line in c.jobs().get_job_logs(submission).splitlines() if "xalign sweep: error:" in line]
    assert len(errors) == 1 and errors[0] in out, out[-6000:]
    (ip,) = {n.node_ip for n in c.alive("nodes")}      # both nodes: this machine's IP
    assert (f"checkpoint.storage_path: {c.head_local} is a folder local to the driver's node: node {ip} does not "
            "see the file the driver wrote there") in errors[0]
    assert errors[0].count("does not see") == 1            # the second node only; the head sees it
    assert "Multi-node runs need storage every node shares" in errors[0]
    # Nothing started: no MLflow run (not even the parent), nothing written to the folder
    # (the probes were removed), no Tune experiment.
    assert mlflow_runs(c, "mn-local") == []
    assert sorted(p.name for p in c.head_local.iterdir()) == ["only-on-the-head"]
    print(f"\nhead-local storage refused in {seconds:.0f}s")


def test_stopping_the_job_stops_its_trials(cluster, tiny_world_overrides):
    from mlflow.tracking import MlflowClient

    c = cluster
    submission = f"mn-stop-{uuid.uuid4().hex[:8]}"
    storage = c.base / "shared" / "stop"
    proc = submit(c, overrides(c, tiny_world_overrides, name="mn-stop", storage=storage, steps=100000,
                                   evaluate=False),
                  "--no-wait", "--submission-id", submission)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # Wait until both trials train, one on each node: their MLflow child runs RUNNING and
    # tagged by their rank-0 worker (which is past its set-up then), so no trial is still
    # being placed when the job is stopped.
    jobs, client = c.jobs(), MlflowClient(c.mlflow.uri)
    deadline, running, job_id = time.monotonic() + 180, [], None
    while time.monotonic() < deadline:
        status = jobs.get_job_status(submission).value
        assert status in ("PENDING", "RUNNING"), jobs.get_job_logs(submission)[-6000:]
        job_id = job_id or jobs.get_job_info(submission).job_id
        exp = client.get_experiment_by_name("mn-stop")
        running = client.search_runs([exp.experiment_id], "tags.`xalign.phase` = 'search' and "
                                     "attributes.status = 'RUNNING'") if exp else []
        if len({r.data.tags.get("xalign.node_id") for r in running} - {None}) == 2:
            break
        time.sleep(1)
    assert len({r.data.tags.get("xalign.node_id") for r in running} - {None}) == 2, \
        jobs.get_job_logs(submission)[-6000:]
    before = [a.class_name for a in c.alive("actors", job_id=job_id) if not a.is_detached]
    assert before.count("ImplicitFunc") == 2 and before.count("RayTrainWorker") == 2, before   # what must stop
    assert "TrainController" in before
    assert c.alive("placement_groups", state="CREATED", creator_job_id=job_id)

    stop = c.ray("job", "stop", "--address", c.dashboard, submission, timeout=120)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert jobs.get_job_status(submission).value == "STOPPED"
    status = c.ray("job", "status", "--address", c.dashboard, submission)
    assert f"Job '{submission}' was stopped" in status.stdout, status.stdout + status.stderr

    # Within a minute no actor of the job is alive (trials, Train controllers and workers)
    # and the trials' placement groups (their CPUs) are released. Detached actors are not
    # the job's to stop: Ray Train's own (a placement-group cleaner that exits once its
    # controller is gone, Ray's cluster-wide autoscaling coordinator) may outlive it.
    stopped = time.monotonic()
    while True:
        left = [a for a in c.alive("actors", job_id=job_id) if not a.is_detached]
        groups = c.alive("placement_groups", state="CREATED", creator_job_id=job_id)
        if not (left or groups) or time.monotonic() - stopped > 60:
            break
        time.sleep(1)
    assert left == [], [(a.class_name, a.node_id, c.worker_log(a.pid)) for a in left]
    assert groups == [], [(g.placement_group_id, g.name, g.is_detached, g.bundles, g.stats) for g in groups]
    detached = sorted(a.class_name for a in c.alive("actors", job_id=job_id))
    print(f"\njob stop: no actor of job {job_id} alive {time.monotonic() - stopped:.0f}s after `ray job stop` "
          f"returned (detached: {detached or 'none'})")

    # The driver took the SIGTERM of `ray job stop` and ended its runs: none left RUNNING,
    # each saying how to go on.
    runs = client.search_runs([client.get_experiment_by_name("mn-stop").experiment_id])
    assert runs and all(r.info.status == "KILLED" and "--resume" in r.data.tags.get("xalign.stopped", "")
                        for r in runs), [(r.info.run_name, r.info.status) for r in runs]
