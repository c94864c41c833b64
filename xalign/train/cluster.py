"""The Ray cluster a run or a sweep uses: join the one in RAY_ADDRESS (checked in seconds)
or start a local instance, and refuse work that asks for more CPUs or GPUs than the
cluster has (it would wait forever). Used by `xalign train` and `xalign sweep`."""

from __future__ import annotations

import contextlib
import math
import json
import os
import socket
from typing import Optional

import ray

from xalign.config.schema import RunConfig
from xalign.errors import XalignError


class TrainingError(XalignError, RuntimeError):
    """A run that could not finish, with what to look at."""


def init_ray(cfg: RunConfig, *, headroom_cpus: int = 0) -> None:
    """Join the cluster in RAY_ADDRESS, or start a local Ray instance; refuse a run that asks
    for more CPUs or GPUs than the cluster has, unless ``scaling.autoscale`` says nodes will
    be added. ``headroom_cpus`` adds logical CPUs to a local instance for actors that hold a
    sliver of CPU but do no work (a sweep's trial functions)."""
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        if address:
            check_ray_address(address)
        gcs_port = None if address else _free_port()
        try:
            # The dashboard (loopback only) serves the state API that Ray Train's monitor polls.
            with _env(RAY_GCS_SERVER_PORT=str(gcs_port) if gcs_port else None):
                ray.init(address=address or "local", dashboard_host="127.0.0.1",
                         num_cpus=None if address else (os.cpu_count() or 1) + headroom_cpus,
                         runtime_env=_job_env(address or f"127.0.0.1:{gcs_port}"))
        except ConnectionError as exc:
            raise TrainingError(f"RAY_ADDRESS={address}: cannot join the Ray cluster there: {exc}. Check that the "
                                "cluster is up (`ray status`) or unset RAY_ADDRESS to run on this machine") from exc
    if not cfg.scaling.autoscale:
        runs_that_fit(cfg)


def runs_that_fit(cfg: RunConfig, *, extra_cpu: float = 0.0) -> int:
    """How many runs of ``cfg``'s workers (each holding ``extra_cpu`` more, e.g. a sweep
    trial's Tune function) the cluster holds at once. Not one: a TrainingError naming the
    resource short, unless ``scaling.autoscale`` (nodes come on demand; then at least 1)."""
    s = cfg.scaling
    have = ray.cluster_resources()
    need_cpu = s.num_workers * s.cpus_per_worker
    need_gpu = s.num_workers * s.gpus_per_worker if s.use_gpu else 0.0
    fit = math.floor(have.get("CPU", 0) / (need_cpu + extra_cpu))
    if need_gpu:
        fit = min(fit, math.floor(have.get("GPU", 0) / need_gpu))
    if fit >= 1 or s.autoscale:
        return max(fit, 1)
    where = f"the Ray cluster at {os.environ['RAY_ADDRESS']}" if os.environ.get("RAY_ADDRESS") else "this Ray instance"
    if need_cpu + extra_cpu > have.get("CPU", 0):
        extra = f" (+ {extra_cpu:g} for the trial's Tune function)" if extra_cpu else ""
        raise TrainingError(
            f"scaling asks for {s.num_workers} workers x {s.cpus_per_worker:g} CPUs = {need_cpu:g} CPUs{extra} but "
            f"{where} has {have.get('CPU', 0):g}; lower scaling.num_workers or scaling.cpus_per_worker, or set "
            "scaling.autoscale=true if the cluster adds nodes on demand")
    raise TrainingError(
        f"scaling asks for {s.num_workers} workers x {s.gpus_per_worker:g} GPUs = {need_gpu:g} GPUs but {where} "
        f"has {have.get('GPU', 0):g}; lower scaling.num_workers or scaling.gpus_per_worker, or set "
        "scaling.autoscale=true if the cluster adds GPU nodes on demand")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _env(**values: Optional[str]):
    """Environment variables set for the duration (None: left alone)."""
    old = {k: os.environ.get(k) for k, v in values.items() if v is not None}
    os.environ.update({k: v for k, v in values.items() if v is not None})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _job_env(address: str) -> Optional[dict]:
    """The job's runtime environment: RAY_ADDRESS (``_cluster_address_env``) and, when the
    driver has one, its $XALIGN_HOME, so workers read the caches the driver filled before Ray
    started (the tokenised data, a converted GGUF checkpoint) even on a cluster started with
    another environment (``ray start``)."""
    env = _cluster_address_env(address) or {}
    # A submitted job's own runtime environment reaches every worker already, and Ray refuses
    # a driver runtime_env that sets one of its variables again.
    if os.environ.get("XALIGN_HOME") and "XALIGN_HOME" not in _submitted_job_env_vars():
        env.setdefault("env_vars", {})["XALIGN_HOME"] = os.environ["XALIGN_HOME"]
    return env or None


def _submitted_job_env_vars() -> set[str]:
    """Names of the environment variables the runtime environment of the `ray job submit`
    job this driver runs in sets (Ray hands it over in RAY_JOB_CONFIG_JSON_ENV_VAR); empty
    outside a submitted job."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "")
    if not raw:
        return set()
    try:
        env_vars = (json.loads(raw).get("runtime_env") or {}).get("env_vars") or {}
    except (ValueError, AttributeError):
        return set()
    return set(env_vars)


def _cluster_address_env(address: str) -> Optional[dict]:
    """The job's runtime environment: RAY_ADDRESS = this cluster, in every worker. Ray
    Train's placement-group cleaner (which frees a trial's workers' CPUs and GPUs when ASHA
    or `ray job stop` ends the trial) finds its cluster through the state API; without
    RAY_ADDRESS it looks for Ray instances on the machine and gives up when there are
    several (another local instance, or `ray start` nodes next to a laptop run), and the
    leaked reservation then starves the next trials. None where the job's own runtime
    environment (ray job submit) already names RAY_ADDRESS, or the address is not host:port."""
    if address in ("auto", "local") or "://" in address:
        return None
    if "RAY_ADDRESS" in _submitted_job_env_vars():
        return None
    return {"env_vars": {"RAY_ADDRESS": address}}


def check_ray_address(address: str, timeout: float = 5.0) -> None:
    """A clear error, in seconds rather than after Ray's minute of retries, when nothing
    answers at RAY_ADDRESS (host:port of the cluster's GCS, as `ray start --head` prints)."""
    if address in ("auto", "local") or address.startswith("ray://"):
        return
    if address.startswith(("http://", "https://")):
        raise TrainingError(f"RAY_ADDRESS={address} is a dashboard (job submission) address; the driver needs the "
                            "cluster's GCS address host:port (`ray start --head` prints it, default port 6379). "
                            "Use the http:// address with `ray job submit --address` instead")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise TrainingError(f"RAY_ADDRESS={address} is not host:port (e.g. 127.0.0.1:6379)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise TrainingError(f"RAY_ADDRESS={address}: no Ray cluster answers there ({exc.strerror or exc}). Start "
                            "one with `ray start --head`, fix the address, or unset RAY_ADDRESS to run on this "
                            "machine") from exc


def check_ray_before_work() -> None:
    """Before building anything: a RAY_ADDRESS that nothing answers at fails now."""
    if os.environ.get("RAY_ADDRESS") and not ray.is_initialized():
        check_ray_address(os.environ["RAY_ADDRESS"])
