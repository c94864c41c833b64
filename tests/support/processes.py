"""Processes a test starts and must stop itself: each in its own session, stopped by its
process-group id (never by name, so other Ray or MLflow instances on the machine are safe)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Optional


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports on 127.0.0.1 (all held open while choosing)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def session_groups(sid: int) -> set[int]:
    """Process-group ids of the live processes in session ``sid`` (Linux /proc)."""
    groups = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[3]) == sid:   # state, ppid, pgrp, session
            groups.add(int(fields[2]))
    return groups


def stop_session(proc: subprocess.Popen, timeout: float = 20) -> None:
    """``stop_group`` for a process that starts others in their own process groups (Ray
    gives each worker one): the leader's group first (SIGTERM, so ``ray start --block``
    stops its node), then SIGKILL to every group still left in the session it leads."""
    stop_group(proc, timeout=timeout)
    deadline = time.monotonic() + timeout
    while (groups := session_groups(proc.pid)) and time.monotonic() < deadline:
        for pgid in groups:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


def stop_group(proc: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM then SIGKILL the process group led by ``proc`` (started with start_new_session)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=timeout)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)   # children that outlived the leader
    except ProcessLookupError:
        pass
    proc.wait(timeout=timeout)


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 with a SQLite database and a local artifact store."""

    def __init__(self, root: Path, port: Optional[int] = None):
        self.root, self.port = Path(root), port or free_port()
        self.proc: Optional[subprocess.Popen] = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> "MlflowServer":
        self.root.mkdir(parents=True, exist_ok=True)
        log = open(self.root / "server.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts")],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            # MLflow's job runner (GenAI jobs) adds seven busy huey consumers; tracking needs none.
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.root / 'server.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"mlflow server did not answer in {timeout}s: "
                           f"{(self.root / 'server.log').read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)
            self.proc = None
