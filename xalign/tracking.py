"""The one place that talks to MLflow.

The driver opens a run (params = the flattened config with dotted keys, the resolved YAML as
an artifact) and closes it with its final status; rank 0 of the training workers logs step
metrics into that run by id. Nothing else in xalign imports mlflow.

A store that stops answering (a restarted server, a locked database) is retried for
``tracking.retry_seconds``; step metrics that could not be sent wait in memory and in the
run's checkpoints (``unsent_metrics.jsonl``) and are sent when the store is back, so none is
dropped. After the retry window the run fails with an error that names the store and what
was not sent. Secrets never reach the store: credentials in URIs and the values of secret-
looking environment variables are masked in every param, tag and text artifact.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, TypeVar

import yaml
from pydantic import BaseModel

from xalign.config.loader import flatten
from xalign.config.schema import TrackingConfig
from xalign.errors import XalignError

T = TypeVar("T")

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


class TrackingError(XalignError):
    """The MLflow store could not be used (after retrying)."""


#: MLflow errors that a retry cannot fix (a bad request, a missing run); others (connection
#: refused, timeouts, 5xx, a locked SQLite file) are retried.
_PERMANENT = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS",
              "PERMISSION_DENIED", "UNAUTHENTICATED", "BAD_REQUEST", "INVALID_STATE"}


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    # xalign retries itself (with_retries) and keeps unsent metrics; MLflow's own HTTP retries
    # (7 with exponential back-off by default) would block a training step for minutes.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    return MlflowClient(tracking_uri=uri)


def is_transient(exc: BaseException) -> bool:
    return getattr(exc, "error_code", None) not in _PERMANENT


def with_retries(what: str, uri: str, seconds: float, fn: Callable[[], T]) -> T:
    """``fn()``, retried with back-off while the store fails transiently, for ``seconds``."""
    deadline = time.monotonic() + seconds
    delay = 0.5
    while True:
        try:
            return fn()
        except Exception as exc:  # mlflow, requests, sqlalchemy all raise their own kinds
            left = deadline - time.monotonic()
            if not is_transient(exc) or left <= 0:
                raise TrackingError(
                    f"MLflow store {redact(uri)}: {what} failed"
                    f"{f' for {seconds:g}s (tracking.retry_seconds)' if is_transient(exc) else ''}: "
                    f"{type(exc).__name__}: {redact(str(exc).splitlines()[0] if str(exc) else '')[:300]}") from exc
            time.sleep(min(delay, left))
            delay = min(delay * 2, 10.0)


_URI_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][\w+.-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@/\s]+)@")
_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|API_?KEY|ACCESS_KEY|PRIVATE_KEY", re.I)


def secret_values() -> list[str]:
    """Values of environment variables whose names say they are secrets (long enough to
    be matched safely), longest first."""
    values = {v for k, v in environment().items() if _SECRET_NAME.search(k) and len(v) >= 8}
    return sorted(values, key=len, reverse=True)


def environment() -> dict[str, str]:
    """A copy of os.environ. Iterating os.environ itself raises KeyError when another
    thread removes a variable meanwhile (MLflow's telemetry thread does: it failed 2 of 8
    demo trials at start_run), so copy, and copy again if that happens."""
    for _ in range(20):
        try:
            return dict(os.environ)
        except (KeyError, RuntimeError):
            continue
    return dict(os.environ)


def redact(text: str) -> str:
    """``text`` with URI passwords (scheme://user:PASSWORD@host) and secret env values masked."""
    text = _URI_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    for value in secret_values():
        text = text.replace(value, "***")
    return text


def resolved(cfg: TrackingConfig) -> TrackingConfig:
    """``cfg`` with its URI made absolute on this machine (the env var or the default
    resolved here), so that Ray workers and tasks, whose working directory differs, log to
    the same store."""
    return cfg.model_copy(update={"tracking_uri": tracking_uri(cfg)}) if cfg.enabled else cfg


def check_reachable(cfg: TrackingConfig) -> None:
    """Fail early, with the URI, when the tracking store cannot be reached (before any run
    or trial starts)."""
    if not cfg.enabled:
        return
    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:///"):
        # A new SQLite store is created by the first run; checking it must not create it.
        folder = Path(uri.removeprefix("sqlite:///")).parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise XalignError(f"tracking.tracking_uri: the SQLite store {uri} cannot be created: its folder {folder} "
                              f"{'does not exist' if not folder.is_dir() else 'is not writable'}. Fix the path, or "
                              "set tracking.enabled=false")
        if not Path(uri.removeprefix("sqlite:///")).exists():
            return
    try:
        _client(uri).search_experiments(max_results=1)
    except Exception as exc:  # mlflow raises many kinds: all mean "cannot use this store"
        raise XalignError(f"tracking.tracking_uri: cannot reach the MLflow store at {redact(uri)}: "
                          f"{type(exc).__name__}: {redact(str(exc).splitlines()[0])[:300]}. Start the server, fix the "
                          "URI (or MLFLOW_TRACKING_URI), or set tracking.enabled=false") from exc


def experiment_id(client, name: str) -> str:
    """The experiment's id, created when missing, and tagged as a model-training experiment
    (``mlflow.experimentKind``) unless someone set its kind already."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    if EXPERIMENT_KIND_TAG not in (experiment.tags or {}):
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment.experiment_id


def find_run(cfg: TrackingConfig, tags: Mapping[str, str]) -> Optional[str]:
    """The id of the newest run of the experiment carrying all ``tags``, if any."""
    client = _client(tracking_uri(cfg))
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = client.search_runs([experiment_id(client, cfg.experiment)], filter_string=query,
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def reopen_run(cfg: TrackingConfig, run_id: str) -> None:
    """Set an ended run (a resumed sweep's parent) RUNNING again."""
    uri = tracking_uri(cfg)
    client = _client(uri)
    with_retries("reopening a run", uri, cfg.retry_seconds, lambda: client.update_run(run_id, status="RUNNING"))


def child_runs(cfg: TrackingConfig, parent_run_id: str, phase: str) -> list[tuple[str, str, str]]:
    """(run id, trial id, status) of a sweep's child runs in ``phase``."""
    client = _client(tracking_uri(cfg))
    query = f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.`xalign.phase` = '{phase}'"
    runs = with_retries("listing the sweep's runs", tracking_uri(cfg), cfg.retry_seconds, lambda: client.search_runs(
        [experiment_id(client, cfg.experiment)], filter_string=query, max_results=50000))
    return [(r.info.run_id, r.data.tags.get("xalign.trial_id", ""), r.info.status) for r in runs]


def start_run(cfg: TrackingConfig, *, run_name: str, params: Mapping[str, Any], config_yaml: str,
              tags: Optional[Mapping[str, str]] = None, reuse_tag: Optional[str] = None) -> str:
    """Open an MLflow run with the config as params and as an artifact; return its id.
    With ``reuse_tag``, a run carrying the same value of that tag (and parent) is reopened
    instead of creating a duplicate (a resumed sweep trial)."""
    from mlflow.entities import Param

    uri = tracking_uri(cfg)
    client = _client(uri)
    tags = {k: redact(str(v)) for k, v in (tags or {}).items()}

    def call(what: str, fn: Callable[[], T]) -> T:
        return with_retries(what, uri, cfg.retry_seconds, fn)

    if reuse_tag:
        keep = {k: v for k, v in tags.items() if k in (reuse_tag, "mlflow.parentRunId")}
        existing = call("searching runs", lambda: find_run(cfg, keep))
        if existing is not None:
            call("reopening a run", lambda: client.update_run(existing, status="RUNNING"))
            return existing
    exp = call("opening the experiment", lambda: experiment_id(client, cfg.experiment))
    run_id = call("creating a run", lambda: client.create_run(exp, run_name=run_name, tags=tags)).info.run_id
    items = [Param(k, redact(str(v))[:_MAX_PARAM_CHARS]) for k, v in sorted(params.items())]
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        call("logging params", lambda: client.log_batch(run_id, params=items[i: i + 100]))
    call("logging config.yaml", lambda: client.log_text(run_id, redact(config_yaml), "config.yaml"))
    return run_id


def open_run(cfg: TrackingConfig, config: BaseModel, *, run_name: str, kind: str,
             params: Optional[Mapping[str, Any]] = None, tags: Optional[Mapping[str, str]] = None,
             parent_run_id: Optional[str] = None, reuse_tag: Optional[str] = None) -> str:
    """The run of one xalign job (``kind``: train, eval, sweep): ``config`` as the
    ``config.yaml`` artifact and, flattened to dotted keys, as params (unless ``params`` are
    given), tagged ``xalign.kind`` and with its parent run. ``reuse_tag``: see ``start_run``."""
    run_tags = {"xalign.kind": kind, **(tags or {})}
    if parent_run_id:
        run_tags["mlflow.parentRunId"] = parent_run_id
    return start_run(cfg, run_name=run_name, params=flatten(config) if params is None else params,
                     config_yaml=yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), tags=run_tags,
                     reuse_tag=reuse_tag)


def sweep_runs(cfg: TrackingConfig, name: str):
    """(parent run, child runs) of the newest sweep called ``name``, as MLflow Run objects,
    and a function that downloads an artifact of a run: (run id, path, folder) -> local path."""
    uri = tracking_uri(cfg)
    client = _client(uri)
    exp = experiment_id(client, cfg.experiment)
    parents = client.search_runs([exp], filter_string=f"tags.`xalign.sweep` = '{name}' and tags.`xalign.kind` = 'sweep'",
                                 order_by=["attributes.start_time DESC"], max_results=1)
    if not parents:
        known = {r.data.tags.get("xalign.sweep") for r in client.search_runs(
            [exp], filter_string="tags.`xalign.kind` = 'sweep'", max_results=200)}
        raise XalignError(f"no sweep named {name!r} in experiment {cfg.experiment!r} at "
                          f"{uri}; sweeps there: {', '.join(sorted(k for k in known if k)) or 'none'}")
    parent = parents[0]
    children = client.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
                                  max_results=5000)
    return parent, children, _quiet_download(client)


def _quiet_download(client):
    """client.download_artifacts without MLflow's per-file progress bar (a report downloads
    one small file per run: the bars were most of what `xalign report` printed)."""
    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR

    def download(run_id: str, path: str, folder: str) -> str:
        before = os.environ.get(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name)
        os.environ[MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name] = "false"
        try:
            return client.download_artifacts(run_id, path, folder)
        finally:
            if before is None:
                os.environ.pop(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name, None)
            else:
                os.environ[MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name] = before

    return download


def log_results(cfg: TrackingConfig, run_id: str, metrics: Mapping[str, float], files=(), *, step: int = 0,
                artifact_dir: str = "eval") -> None:
    """Metrics at ``step`` and files (records, plots) as artifacts of an existing run."""
    uri = tracking_uri(cfg)
    logger = MetricLogger(uri, run_id)
    logger.log(metrics, step=step)
    logger.flush(retry_seconds=cfg.retry_seconds)
    client = _client(uri)
    for path in files:
        with_retries(f"logging {Path(path).name}", uri, cfg.retry_seconds,
                     lambda: client.log_artifact(run_id, str(path), artifact_dir))


def log_text(cfg: TrackingConfig, run_id: str, text: str, artifact_file: str) -> None:
    uri = tracking_uri(cfg)
    with_retries(f"logging {artifact_file}", uri, cfg.retry_seconds,
                 lambda: _client(uri).log_text(run_id, redact(text), artifact_file))


def set_tags(cfg: TrackingConfig, run_id: str, tags: Mapping[str, str]) -> None:
    uri = tracking_uri(cfg)
    client = _client(uri)
    for key, value in tags.items():
        with_retries(f"setting tag {key}", uri, cfg.retry_seconds,
                     lambda: client.set_tag(run_id, key, redact(str(value))))


def end_run(cfg: TrackingConfig, run_id: str, *, status: str) -> None:
    """status: FINISHED | FAILED | KILLED. A run already ended KILLED (a sweep's scheduler
    stopped its trial: ``sweep.runner._close_stopped``) stays KILLED when the dying trial's
    own ``finally`` reports FAILED after that: the two race, and the stop is the truth."""
    uri = tracking_uri(cfg)
    if status == "FAILED":
        current = with_retries(f"reading run {run_id}", uri, cfg.retry_seconds,
                               lambda: _client(uri).get_run(run_id).info.status)
        if current == "KILLED":
            return
    with_retries(f"closing run {run_id} as {status}", uri, cfg.retry_seconds,
                 lambda: _client(uri).set_terminated(run_id, status=status))


UNSENT_FILE = "unsent_metrics.jsonl"   # in a checkpoint: step metrics the store did not take yet


class MetricLogger:
    """Step metrics of one run, logged by rank 0 only, in batches. A failed send never
    stops training and never loses metrics: they stay in ``pending``, are tried again at
    the next ``log``, are saved with each checkpoint (``save_unsent``) and read back on
    resume (``load_unsent``); ``flush`` retries for a while and raises TrackingError."""

    def __init__(self, uri: str, run_id: str):
        self.uri, self.run_id = uri, run_id
        self.client = _client(uri)
        self.pending: list[tuple[str, float, int, int]] = []   # key, value, timestamp ms, step

    def log(self, metrics: Mapping[str, float], *, step: int) -> bool:
        """Queue ``metrics`` and try to send everything queued once; True when all went."""
        now = int(time.time() * 1000)
        self.pending += [(k, float(v), now, int(step)) for k, v in sorted(metrics.items())]
        try:
            self._send()
        except Exception as exc:  # any failure to send: kept, tried again
            if not is_transient(exc):
                raise
            return False
        return True

    def _send(self) -> None:
        from mlflow.entities import Metric

        while self.pending:
            batch = self.pending[:1000]
            self.client.log_batch(self.run_id, metrics=[Metric(k, v, ts, step) for k, v, ts, step in batch])
            del self.pending[:len(batch)]

    def flush(self, *, retry_seconds: float) -> None:
        with_retries(f"logging {len(self.pending)} metric values to run {self.run_id}", self.uri, retry_seconds,
                     self._send)

    def save_unsent(self, directory: Path) -> None:
        if self.pending:
            lines = (json.dumps({"key": k, "value": v, "timestamp": ts, "step": step}) for k, v, ts, step in self.pending)
            (Path(directory) / UNSENT_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")

    def load_unsent(self, directory: Path) -> int:
        """Queue the metrics a checkpoint holds as unsent (before this run's new ones)."""
        saved = read_unsent(directory)
        self.pending[:0] = saved
        return len(saved)


class BackgroundMetricLogger(MetricLogger):
    """A MetricLogger whose sends run on a thread, so training never waits for the store
    (a log_batch to SQLite took 25 ms here, 9% of a 10-step logging window of the world's
    model). The guarantees are the same: a transient failure keeps the metrics pending,
    retried at the next ``log``; ``save_unsent`` first tries one send (waiting for one in
    flight), then saves what is still pending with the checkpoint; a non-transient error
    is raised at the next ``log``."""

    def __init__(self, uri: str, run_id: str):
        import threading

        super().__init__(uri, run_id)
        self._lock = threading.Lock()        # guards pending
        self._sending = threading.Lock()     # one send at a time
        self._wake = threading.Event()
        self._error: Optional[BaseException] = None
        threading.Thread(target=self._run, name="xalign-metrics", daemon=True).start()

    def log(self, metrics: Mapping[str, float], *, step: int) -> bool:
        """Queue ``metrics`` for the thread; True (they are sent, or kept, later)."""
        if self._error is not None:
            raise self._error
        now = int(time.time() * 1000)
        with self._lock:
            self.pending += [(k, float(v), now, int(step)) for k, v in sorted(metrics.items())]
        self._wake.set()
        return True

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            self.send_now()

    def send_now(self) -> None:
        """One send of everything pending, now (waiting for one in flight)."""
        with self._sending:
            try:
                self._send()
            except Exception as exc:  # noqa: BLE001  (transient: kept, tried at the next log)
                if not is_transient(exc):
                    self._error = exc

    def _send(self) -> None:
        from mlflow.entities import Metric

        while True:
            with self._lock:
                batch = self.pending[:1000]
            if not batch:
                return
            self.client.log_batch(self.run_id, metrics=[Metric(k, v, ts, step) for k, v, ts, step in batch])
            with self._lock:
                del self.pending[:len(batch)]

    def flush(self, *, retry_seconds: float) -> None:
        with self._sending:
            super().flush(retry_seconds=retry_seconds)

    def save_unsent(self, directory: Path) -> None:
        self.send_now()
        with self._sending, self._lock:
            super().save_unsent(directory)


def read_unsent(directory: Path) -> list[tuple[str, float, int, int]]:
    path = Path(directory) / UNSENT_FILE
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(r["key"], float(r["value"]), int(r["timestamp"]), int(r["step"])) for r in rows]


def send_unsent(cfg: TrackingConfig, run_id: str, directory: Path, *, where: str) -> int:
    """Send the metrics a finished run's last checkpoint (``directory``, a local view of
    ``where``) holds as unsent; the number sent. On failure the file stays in the
    checkpoint and the error names it."""
    logger = MetricLogger(tracking_uri(cfg), run_id)
    count = logger.load_unsent(directory)
    if count:
        try:
            logger.flush(retry_seconds=cfg.retry_seconds)
        except TrackingError as exc:
            raise TrackingError(f"{exc}. The {len(logger.pending)} metric values are kept in "
                                f"{where.rstrip('/')}/{UNSENT_FILE}") from exc
    return count


# --- Opening MLflow's UI on the right page ---------------------------------------------------
# Read in MLflow 3.17's UI bundle (mlflow/server/js/build): the experiment page picks the
# GenAI pages or the training-runs pages from the sidebar's workflow type, which comes from
# the URL's ``workflowType`` (genai | machine_learning), else the browser's localStorage,
# default genai; it does not reconcile it with the ``mlflow.experimentKind`` tag
# (mlflow/mlflow#24498). The tag still matters: it stops the UI asking for the experiment's
# type, and earlier MLflow 3 UIs read it. The runs table's columns are per-browser state, but
# a saved view is stored server-side as the experiment tag ``mlflow.sharedViewState.<key>``
# (JSON ``{name, createdAt, updatedAt, state}``, ``state`` a JSON string of the URL state
# (searchFilter, orderByKey, ...) and the table state (selectedColumns, ...)) and opened with
# ``#/experiments/<id>/runs?viewStateShareKey=<key>``; it also appears in the "Views" menu.

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"   # shown as "Machine learning" in MLflow's UI
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
UI_PORT = 5000


def view_key(name: str) -> str:
    """The saved-view key of a sweep (letters, digits, - and _ only: it goes into a URL)."""
    return "xalign-" + re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")


def save_view(cfg: TrackingConfig, key: str, *, title: str, search_filter: str, metrics: list[str],
              params: list[str] = (), order_by: str = "attributes.start_time", ascending: bool = True) -> None:
    """Store a saved view of the runs table in the experiment: these runs, with these metric
    and param columns. Best effort: a store that refuses it leaves the runs untouched."""
    uri = tracking_uri(cfg)
    client = _client(uri)
    columns = [f"metrics.`{m}`" for m in metrics] + [f"params.`{p}`" for p in params]
    state = {"searchFilter": search_filter, "orderByKey": order_by, "orderByAsc": ascending,
             "startTime": "ALL", "lifecycleFilter": "Active", "datasetsFilter": [], "modelVersionFilter": "All Runs",
             "selectedColumns": columns, "columnOrder": [], "runsHiddenMode": "SHOW_ALL"}
    now = int(time.time() * 1000)
    value = json.dumps({"name": title, "createdAt": now, "updatedAt": now, "state": json.dumps(state)})
    exp = with_retries("opening the experiment", uri, cfg.retry_seconds, lambda: experiment_id(client, cfg.experiment))
    with_retries("saving the runs view", uri, cfg.retry_seconds,
                 lambda: client.set_experiment_tag(exp, VIEW_TAG_PREFIX + key, value))


def ui_link(cfg: TrackingConfig, *, view: Optional[str] = None, run_id: Optional[str] = None,
            port: int = UI_PORT) -> tuple[Optional[str], str]:
    """(the command that serves MLflow's UI on this store, or None for a tracking server;
    the URL of the experiment's training-runs view, opened on ``view`` or on one run)."""
    uri = tracking_uri(cfg)
    client = _client(uri)
    exp = with_retries("opening the experiment", uri, cfg.retry_seconds, lambda: experiment_id(client, cfg.experiment))
    query = (f"viewStateShareKey={view}&" if view else "") + "workflowType=machine_learning"
    if uri.startswith(("http://", "https://")):
        command, base = None, redact(uri).rstrip("/")
    else:
        command, base = f"mlflow ui --backend-store-uri {redact(uri)} --port {port}", f"http://127.0.0.1:{port}"
    return command, f"{base}/#/experiments/{exp}/runs{'/' + run_id if run_id else ''}?{query}"
