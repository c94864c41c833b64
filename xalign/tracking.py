"""The one place that talks to MLflow.

The driver opens a run (params = the flattened config with dotted keys, the resolved YAML as
an artifact) and closes it with its final status; rank 0 of the training workers logs step
metrics into that run by id. Nothing else in xalign imports mlflow.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Mapping, Optional

from xalign.config.schema import TrackingConfig

#: Where runs go when neither the config nor MLFLOW_TRACKING_URI says: a SQLite file in the
#: working directory (MLflow 3 refuses a bare ./mlruns file store without a flag).
DEFAULT_URI = "sqlite:///mlflow.db"
_MAX_PARAM_CHARS = 6000  # MLflow's limit on one param value


def tracking_uri(cfg: TrackingConfig) -> str:
    uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # Make a relative SQLite path absolute, so workers with another cwd find the same file.
        uri = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    return uri


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def resolved(cfg: TrackingConfig) -> TrackingConfig:
    """``cfg`` with its URI made absolute on this machine (the env var or the default
    resolved here), so that Ray workers and tasks, whose working directory differs, log to
    the same store."""
    return cfg.model_copy(update={"tracking_uri": tracking_uri(cfg)}) if cfg.enabled else cfg


def check_reachable(cfg: TrackingConfig) -> None:
    """Fail early, with the URI, when the tracking store cannot be reached (before any run
    or trial starts)."""
    from xalign.errors import XalignError

    if not cfg.enabled:
        return
    uri = tracking_uri(cfg)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    try:
        _client(uri).search_experiments(max_results=1)
    except Exception as exc:  # mlflow raises many kinds: all mean "cannot use this store"
        raise XalignError(f"tracking.tracking_uri: cannot reach the MLflow store at {uri}: "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}. Start the server, fix the "
                          "URI (or MLFLOW_TRACKING_URI), or set tracking.enabled=false") from exc


def experiment_id(client, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment else client.create_experiment(name)


def find_run(cfg: TrackingConfig, tags: Mapping[str, str]) -> Optional[str]:
    """The id of the newest run of the experiment carrying all ``tags``, if any."""
    client = _client(tracking_uri(cfg))
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = client.search_runs([experiment_id(client, cfg.experiment)], filter_string=query,
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def start_run(cfg: TrackingConfig, *, run_name: str, params: Mapping[str, Any], config_yaml: str,
              tags: Optional[Mapping[str, str]] = None, reuse_tag: Optional[str] = None) -> str:
    """Open an MLflow run with the config as params and as an artifact; return its id.
    With ``reuse_tag``, a run carrying the same value of that tag (and parent) is reopened
    instead of creating a duplicate (a resumed sweep trial)."""
    from mlflow.entities import Param

    uri = tracking_uri(cfg)
    client = _client(uri)
    tags = dict(tags or {})
    if reuse_tag:
        keep = {k: v for k, v in tags.items() if k in (reuse_tag, "mlflow.parentRunId")}
        existing = find_run(cfg, keep)
        if existing is not None:
            client.update_run(existing, status="RUNNING")
            return existing
    run = client.create_run(experiment_id(client, cfg.experiment), run_name=run_name, tags=tags)
    run_id = run.info.run_id
    items = [Param(k, str(v)[:_MAX_PARAM_CHARS]) for k, v in sorted(params.items())]
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=items[i: i + 100])
    client.log_text(run_id, config_yaml, "config.yaml")
    return run_id


def log_results(cfg: TrackingConfig, run_id: str, metrics: Mapping[str, float], files=(), *, step: int = 0,
                artifact_dir: str = "eval") -> None:
    """Metrics at ``step`` and files (records, plots) as artifacts of an existing run."""
    MetricLogger(tracking_uri(cfg), run_id).log(metrics, step=step)
    client = _client(tracking_uri(cfg))
    for path in files:
        client.log_artifact(run_id, str(path), artifact_dir)


def log_text(cfg: TrackingConfig, run_id: str, text: str, artifact_file: str) -> None:
    _client(tracking_uri(cfg)).log_text(run_id, text, artifact_file)


def set_tags(cfg: TrackingConfig, run_id: str, tags: Mapping[str, str]) -> None:
    client = _client(tracking_uri(cfg))
    for key, value in tags.items():
        client.set_tag(run_id, key, value)


def end_run(cfg: TrackingConfig, run_id: str, *, status: str) -> None:
    """status: FINISHED | FAILED | KILLED."""
    _client(tracking_uri(cfg)).set_terminated(run_id, status=status)


class MetricLogger:
    """Step metrics of one run, logged by rank 0 only, in batches."""

    def __init__(self, uri: str, run_id: str):
        self.client, self.run_id = _client(uri), run_id

    def log(self, metrics: Mapping[str, float], *, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in sorted(metrics.items())]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i: i + 1000])
