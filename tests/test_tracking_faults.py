"""The MLflow server stopped and restarted while metrics are logged: nothing is dropped
(retried when it is back, kept in checkpoints meanwhile), or a clear error after the retry
window. Secrets never reach the store. A real `mlflow server` on a SQLite database."""

from __future__ import annotations

import time

import pytest

from tests.support.processes import MlflowServer
from xalign import tracking
from xalign.config.schema import TrackingConfig


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module; tests that stop it start it again before they end."""
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow")).start()
    yield srv
    srv.stop()


def history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key))


@pytest.mark.slow
def test_metrics_logged_while_the_server_is_down_arrive_after_it_restarts(server, tmp_path):
    cfg = TrackingConfig(tracking_uri=server.uri, experiment="faults", retry_seconds=1)
    run_id = tracking.start_run(cfg, run_name="outage", params={"a": 1}, config_yaml="a: 1\n")
    logger = tracking.MetricLogger(server.uri, run_id)
    assert logger.log({"loss": 1.0}, step=1)

    server.stop()
    start = time.monotonic()
    assert not logger.log({"loss": 2.0}, step=2)        # kept, training goes on at once
    assert time.monotonic() - start < 15 and len(logger.pending) == 1
    with pytest.raises(tracking.TrackingError, match=f"{server.uri}.*1 metric values.*retry_seconds"):
        logger.flush(retry_seconds=1)                     # the window ends: a clear error, still kept
    assert len(logger.pending) == 1

    # A worker dies now: its checkpoint holds the unsent metrics; the restarted one reads them.
    logger.save_unsent(tmp_path)
    resumed = tracking.MetricLogger(server.uri, run_id)
    assert resumed.load_unsent(tmp_path) == 1

    server.start()
    assert resumed.log({"loss": 3.0}, step=3)
    assert history(server.uri, run_id, "loss") == [(1, 1.0), (2, 2.0), (3, 3.0)]


@pytest.mark.slow
def test_driver_calls_retry_until_the_server_is_back(server, tmp_path):
    import threading

    cfg = TrackingConfig(tracking_uri=server.uri, experiment="faults", retry_seconds=90)
    run_id = tracking.start_run(cfg, run_name="closing", params={}, config_yaml="{}\n")
    server.stop()
    restart = threading.Timer(2.0, server.start)
    restart.start()
    tracking.log_results(cfg, run_id, {"eval/acc": 0.5}, step=7)   # blocks until the server is back
    tracking.end_run(cfg, run_id, status="FINISHED")
    restart.join()
    from mlflow.tracking import MlflowClient

    run = MlflowClient(server.uri).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["eval/acc"] == 0.5


@pytest.mark.slow
def test_unsent_metrics_in_a_checkpoint_are_sent_or_named_in_the_error(server, tmp_path):
    cfg = TrackingConfig(tracking_uri=server.uri, experiment="faults", retry_seconds=0.5)
    run_id = tracking.start_run(cfg, run_name="final", params={}, config_yaml="{}\n")
    logger = tracking.MetricLogger(server.uri, run_id)
    server.stop()
    logger.log({"loss": 4.0, "step": 9}, step=9)
    logger.save_unsent(tmp_path)
    with pytest.raises(tracking.TrackingError, match=r"2 metric values are kept in s3://b/run/step_9/unsent_metrics"):
        tracking.send_unsent(cfg, run_id, tmp_path, where="s3://b/run/step_9")
    server.start()
    assert tracking.send_unsent(cfg, run_id, tmp_path, where="s3://b/run/step_9") == 2
    assert history(server.uri, run_id, "loss") == [(9, 4.0)]


def test_secrets_are_masked_in_params_tags_and_artifacts(server, monkeypatch):
    secret = "sk-planted-4f1c9e2b7a"
    monkeypatch.setenv("XALIGN_TEST_API_TOKEN", secret)
    cfg = TrackingConfig(tracking_uri=server.uri, experiment="faults")
    leaky = f"postgresql://alice:{secret}@db.internal:5432/mlflow"
    run_id = tracking.start_run(cfg, run_name="secrets", params={"tracking.tracking_uri": leaky, "note": secret},
                                config_yaml=f"tracking_uri: {leaky}\n", tags={"why": f"failed at {leaky}"})
    tracking.log_text(cfg, run_id, f"token={secret}", "notes.txt")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(server.uri)
    run = client.get_run(run_id)
    assert run.data.params["tracking.tracking_uri"] == "postgresql://alice:***@db.internal:5432/mlflow"
    texts = [*run.data.params.values(), *run.data.tags.values()]
    texts += [client.download_artifacts(run_id, a.path) for a in client.list_artifacts(run_id)]
    texts = [open(t).read() if t.startswith("/") else t for t in texts]
    assert not [t for t in texts if secret in t]


@pytest.mark.slow
def test_the_background_logger_never_waits_for_the_store_and_loses_nothing(tmp_path):
    from tests.support.processes import free_port

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = TrackingConfig(tracking_uri=uri, experiment="background")
    run_id = tracking.start_run(cfg, run_name="bg", params={}, config_yaml="{}\n")
    logger = tracking.BackgroundMetricLogger(uri, run_id)
    for step in range(1, 31):
        assert logger.log({"loss": float(step), "lr": 0.1}, step=step)
    (tmp_path / "ckpt").mkdir()
    logger.save_unsent(tmp_path / "ckpt")          # sends what is pending first: nothing left to keep
    assert tracking.read_unsent(tmp_path / "ckpt") == []
    assert history(uri, run_id, "loss") == [(s, float(s)) for s in range(1, 31)]   # each step once

    down = tracking.BackgroundMetricLogger(f"http://127.0.0.1:{free_port()}", run_id)   # nothing listens
    start = time.monotonic()
    for step in range(1, 4):
        down.log({"loss": float(step)}, step=step)
    assert time.monotonic() - start < 0.5           # queued: the step did not wait for the store
    (tmp_path / "ckpt2").mkdir()
    down.save_unsent(tmp_path / "ckpt2")           # one more try, then kept with the checkpoint
    assert [(k, v, s) for k, v, _, s in tracking.read_unsent(tmp_path / "ckpt2")] == \
        [("loss", 1.0, 1), ("loss", 2.0, 2), ("loss", 3.0, 3)]
    assert len(down.pending) == 3                   # and still pending, for when the store is back


def test_masking_secrets_survives_another_thread_changing_the_environment():
    """MLflow's telemetry thread sets and removes a variable while runs start: reading the
    environment for secrets must not fail (it did: KeyError in 2 of 8 demo trials)."""
    import os
    import threading

    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            os.environ["XALIGN_TEST_CHURN"] = "x" * 16
            os.environ.pop("XALIGN_TEST_CHURN", None)

    thread = threading.Thread(target=churn, daemon=True)
    os.environ["XALIGN_TEST_API_KEY"] = "sk-planted-0123456789"
    thread.start()
    try:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            assert tracking.redact("key sk-planted-0123456789") == "key ***"
    finally:
        stop.set()
        thread.join()
        os.environ.pop("XALIGN_TEST_API_KEY", None)


def test_a_trial_stopped_by_the_scheduler_stays_killed_when_its_process_reports_failed_late(tmp_path):
    """ASHA stops a trial: the sweep ends its run KILLED, and the dying trial's own `finally`
    may report FAILED after that (seen in CI: the stopped trial showed FAILED). KILLED stays;
    in the other order the sweep's KILLED replaces the FAILED; other runs end as told."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = TrackingConfig(tracking_uri=uri, experiment="stops")
    client = MlflowClient(tracking_uri=uri)
    late, early, plain = (tracking.start_run(cfg, run_name=n, params={}, config_yaml="{}\n")
                          for n in ("late", "early", "plain"))
    tracking.end_run(cfg, late, status="KILLED")
    tracking.end_run(cfg, late, status="FAILED")
    tracking.end_run(cfg, early, status="FAILED")
    tracking.end_run(cfg, early, status="KILLED")
    tracking.end_run(cfg, plain, status="FAILED")
    assert [client.get_run(r).info.status for r in (late, early, plain)] == ["KILLED", "KILLED", "FAILED"]
