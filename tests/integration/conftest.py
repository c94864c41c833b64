"""One small local Ray cluster per test session (2 CPUs, dashboard on loopback for the
state API), with a short private RAY_TMPDIR; stopped at the end of the session."""

from __future__ import annotations

import os
import tempfile

import pytest


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
