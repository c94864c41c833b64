"""cluster/mlflow_server.sh for real: an MLflow server on SQLite, on 127.0.0.1 and a free
port, answers the REST API, listens on loopback only, and stops by its process id."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "cluster" / "mlflow_server.sh"
START_TIMEOUT_S = 240  # the server imports mlflow in several processes: slow on 2 busy cores


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket LISTENing on ``port`` (Linux /proc/net/tcp{,6})."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:
                found.add(addr)
    return found


def _non_loopback_ip() -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent: only picks the outgoing interface
            ip = s.getsockname()[0]
        return None if ip.startswith("127.") else ip
    except OSError:
        return None


@pytest.mark.integration
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/net/tcp")
def test_mlflow_server_on_sqlite_answers_on_loopback_only(tmp_path):
    port = _free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_BACKEND_STORE_URI", None)
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(
        [str(SCRIPT), "--backend", f"sqlite:///{tmp_path}/db/mlflow.db", "--artifacts", str(tmp_path / "artifacts"),
         "--port", str(port), "--workers", "1"],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)  # its own process group: stopped below by this id, with its workers
    url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=10"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    body = json.load(resp)
                break
            except OSError:
                assert time.monotonic() < deadline, "no answer: " + (tmp_path / "server.log").read_text()
                time.sleep(1)
        assert [e["name"] for e in body["experiments"]] == ["Default"]
        assert (tmp_path / "db" / "mlflow.db").exists() and (tmp_path / "artifacts").is_dir()

        addresses = _listening_addresses(port)
        assert addresses == {"0100007F"}, f"listening on {addresses}, not 127.0.0.1 only"
        other_ip = _non_loopback_ip()
        if other_ip:
            with pytest.raises(OSError):
                socket.create_connection((other_ip, port), timeout=5).close()
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
        log.close()
    deadline = time.monotonic() + 30
    while _group_alive(server.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    if _group_alive(server.pid):
        os.killpg(server.pid, signal.SIGKILL)
        pytest.fail("processes of the server outlived it by 30 s after SIGTERM")
    assert not _listening_addresses(port)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # Zombies (exited, not yet reaped by init) still count for killpg: look at their state.
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False
