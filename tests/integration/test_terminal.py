"""What a person sees on the console, in a real pseudo-terminal (pexpect) and through a pipe:
a short `xalign train` on the tiny world (on the session's Ray cluster) shows progress bars
on a terminal, plain progress lines and no bar characters on a pipe, and in both cases none
of Ray's start-up, controller or worker lines: those are in the log file whose path it
prints."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
#: Ray's own lines that must not reach the console (they go to the run's ray_output.log).
RAY_LINES = re.compile(r"Started a local Ray instance|Connected to Ray cluster|TrainController|RayTrainWorker|"
                       r"core_worker\.cc|PreemptionWatcher|\(raylet\)|Token authentication|Trial status", re.I)
BAR = re.compile(r"[█▏▎▍▌▋▊▉]|\d+%\|")


def _command(tmp: Path, tiny_world_overrides: list[str], name: str) -> list[str]:
    return [sys.executable, "-m", "xalign.cli", "train", str(REPO / "configs" / "runs" / "afp-synthetic.yaml"),
            *[f"data.world.{o}" for o in tiny_world_overrides], "optim.max_steps=12", "optim.batch_size=4",
            "data.max_length=64", "eval.every_n_steps=6", "eval.max_items=5", "checkpoint.every_n_steps=6",
            "checkpoint.keep=1", f"checkpoint.storage_path={tmp / 'results'}", f"tracking.run_name={name}",
            f"tracking.tracking_uri=sqlite:///{tmp / 'mlflow.db'}"]


def _env(ray_cluster) -> dict[str, str]:
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.address_info["gcs_address"], "COLUMNS": "160"}
    for key in ("XALIGN_PROGRESS", "XALIGN_PROGRESS_INTERVAL", "XALIGN_VERBOSE", "TERM"):
        env.pop(key, None)
    env["TERM"] = "xterm"
    return env


def _ray_log(output: str) -> Path:
    match = re.search(r"Ray's output: (\S+)", output)
    assert match, output[-3000:]
    return Path(match.group(1))


def test_a_terminal_shows_progress_bars_and_no_ray_chatter(ray_cluster, tiny_world, tiny_world_overrides, tmp_path):
    pexpect = pytest.importorskip("pexpect")
    transcript = io.StringIO()
    command = _command(tmp_path, tiny_world_overrides, "tty")
    child = pexpect.spawn(command[0], command[1:], env=_env(ray_cluster), cwd=str(tmp_path), encoding="utf-8",
                          timeout=600, dimensions=(40, 160))
    child.logfile_read = transcript
    # The training bar of rank 0 of the Ray Train worker, drawn by the driver with tqdm.
    child.expect(r"train tty: 100%\|█+\| 12/12 \[")
    child.expect(r"Finished 12 steps")
    child.expect(pexpect.EOF)
    child.close()
    seen = transcript.getvalue()
    assert child.exitstatus == 0, seen[-3000:]
    assert re.search(r"final eval, trained model[^:\n]*: 100%\|█+\|", seen), seen[-3000:]
    assert not RAY_LINES.search(seen), RAY_LINES.search(seen).group(0)
    assert "TrainController" in _ray_log(seen).read_text(encoding="utf-8")


def test_a_pipe_gets_plain_progress_lines_and_no_ray_chatter(ray_cluster, tiny_world, tiny_world_overrides, tmp_path):
    proc = subprocess.run(_command(tmp_path, tiny_world_overrides, "pipe"), env=_env(ray_cluster), cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert not BAR.search(output) and "\r" not in output, output[-2000:]
    assert not RAY_LINES.search(output), RAY_LINES.search(output).group(0)
    # Plain progress lines: the training run and its periodic evaluations from the worker
    # (relayed), the final evaluation.
    assert re.search(r"^train pipe: 12/12 step \(100%\), loss [\d.]+, lm [\d.]+, ctr [\d.]+, tok_s [\d.k]+, .*done in",
                     proc.stderr, re.M), proc.stderr
    assert re.search(r"^final eval, trained model[^:]*: \d+/\d+ item \(100%\), .*done in", proc.stderr, re.M), proc.stderr
    assert re.search(r"^dev eval [^:]*: \d+/\d+ item \(100%\), .*done in", proc.stderr, re.M), proc.stderr
    # Ray's output is all in the log file it names, the alarming C++ line included.
    log = _ray_log(proc.stderr)
    assert log == tmp_path / "results" / "pipe" / "ray_output.log"
    text = log.read_text(encoding="utf-8")
    assert "TrainController" in text and "RayTrainWorker" in text
