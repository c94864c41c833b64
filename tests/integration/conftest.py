"""One small local Ray cluster per test session (2 CPUs, dashboard on loopback for the
state API), with a short private RAY_TMPDIR; stopped at the end of the session."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    tmp = tempfile.mkdtemp(prefix="xa-ray-", dir="/tmp")  # short: Ray's socket paths are length-limited
    os.environ["RAY_TMPDIR"] = tmp
    context = ray.init(address="local", num_cpus=2, _temp_dir=tmp, dashboard_host="127.0.0.1",
                       _node_ip_address="127.0.0.1",   # loopback only
                       include_dashboard=True, log_to_driver=False)
    yield context
    ray.shutdown()


@pytest.fixture(scope="session")
def small_sweep(ray_cluster, tiny_world, tiny_world_overrides, tmp_path_factory):
    """A small real sweep (`xalign sweep` in a subprocess): the sweep tests, the report and
    notebook tests and the browser test read it back. (tmp folder, the sweep's stdout, its stderr)"""
    tmp = tmp_path_factory.mktemp("sweep")
    sweep_file = tmp / "small.yaml"
    sweep_file.write_text(f"""\
extends: {REPO / 'configs' / 'runs' / 'afp-synthetic.yaml'}
name: small
optim: {{max_steps: 10, batch_size: 4, lr: 1.0e-3}}
data: {{max_length: 64, mix: {{replay_share: 0.2}}}}
eval: {{every_n_steps: 5, max_items: 10}}
checkpoint: {{every_n_steps: 5, keep: 1}}
tracking: {{tracking_uri: "sqlite:///mlflow.db", experiment: sweeps}}   # relative: resolved once by the driver
search:
  objective.temperature: {{float: {{low: 0.05, high: 0.2, log: true}}}}
  optim.lr: {{categorical: {{choices: [3.0e-3, 1.0e-12]}}}}
tune: {{num_samples: 2, seed: 3, max_concurrent_trials: 1, scheduler: asha, asha_metric: train/loss_lm,
        grace_period: 5}}
confirm:
  seeds: [0]
  controls: {{no_contrastive: {{objective.contrastive_weight: 0}}}}
""")
    overrides = [f"data.world.{o}" for o in tiny_world_overrides] + [f"checkpoint.storage_path={tmp / 'ray_results'}"]
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.address_info["gcs_address"]}
    proc = subprocess.run([sys.executable, "-m", "xalign.cli", "sweep", str(sweep_file), *overrides],
                          capture_output=True, text=True, env=env, cwd=tmp, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]
    return tmp, proc.stdout, proc.stderr
