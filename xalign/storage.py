"""Where checkpoints and Tune state go: a local folder, a shared mount (NFS), or object
storage (s3://, gs://, any URI pyarrow.fs understands), addressed the same way.

Before a run or sweep writes anything there, ``check_storage`` proves that it can: every
node of the cluster writes a probe file and reads the one the driver wrote, so a folder
that exists only on the head node (fine on one machine, lost checkpoints on a cluster) is
refused with a message that says what to use instead.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Optional

from xalign.errors import XalignError

PROBE_PREFIX = ".xalign-probe-"


class StorageError(XalignError):
    """The storage path cannot hold this run's checkpoints."""


def is_uri(path: str) -> bool:
    return "://" in str(path)


def resolve(path: str) -> str:
    """A URI as given; a local path absolute (workers have another working directory)."""
    return str(path) if is_uri(path) else str(Path(path).expanduser().resolve())


def join(root: str, *parts: str) -> str:
    if is_uri(root):
        return "/".join([str(root).rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(root, *parts))


def filesystem(path: str):
    """(pyarrow filesystem, path inside it) for a local path or a URI."""
    import pyarrow.fs

    if is_uri(path):
        return pyarrow.fs.FileSystem.from_uri(str(path))
    return pyarrow.fs.LocalFileSystem(), resolve(path)


def exists(path: str) -> bool:
    import pyarrow.fs

    fs, inner = filesystem(path)
    return fs.get_file_info(inner).type != pyarrow.fs.FileType.NotFound


def read_text(path: str) -> str:
    fs, inner = filesystem(path)
    with fs.open_input_stream(inner) as f:
        return f.read().decode("utf-8")


def write_text(path: str, text: str) -> None:
    fs, inner = filesystem(path)
    parent = inner.rsplit("/", 1)[0]
    if parent:
        fs.create_dir(parent, recursive=True)
    with fs.open_output_stream(inner) as f:
        f.write(text.encode("utf-8"))


def delete(path: str) -> None:
    fs, inner = filesystem(path)
    try:
        fs.delete_file(inner)
    except (FileNotFoundError, OSError):
        pass


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]


def probe(root: str, token_name: Optional[str], token: Optional[str]) -> Optional[str]:
    """Write, read back and delete a probe file under ``root``; with ``token_name``, also
    read the probe the driver wrote and compare its content. None when all is well, else
    what failed."""
    mine = join(root, f"{PROBE_PREFIX}{uuid.uuid4().hex}")
    try:
        write_text(mine, "ok")
        if read_text(mine) != "ok":
            return f"a file written to {mine} read back different"
    except Exception as exc:  # noqa: BLE001  (OSError, pyarrow errors, cloud credential errors)
        return f"cannot write to it ({_reason(exc)})"
    finally:
        delete(mine)
    if token_name is not None:
        try:
            seen = read_text(join(root, token_name))
        except Exception as exc:  # noqa: BLE001
            return f"does not see the file the driver wrote there ({_reason(exc)})"
        if seen != token:
            return "sees a different file than the driver wrote there"
    return None


def _node_probe(root: str, token_name: str, token: str) -> tuple[str, Optional[str]]:
    import ray

    return ray.util.get_node_ip_address(), probe(root, token_name, token)


ADVICE = ("Multi-node runs need storage every node shares: a shared mount (NFS) at the same path on every node, "
          "or object storage (s3://bucket/prefix, gs://bucket/prefix)")


def check_storage(root: str, *, key: str = "checkpoint.storage_path") -> None:
    """Refuse a storage path that this process cannot write (before anything starts)."""
    problem = probe(root, None, None)
    if problem is not None:
        raise StorageError(f"{key}: the driver {problem} at {root}. Point {key} at a writable folder or bucket")


def check_shared(root: str, *, key: str = "checkpoint.storage_path") -> None:
    """Refuse, before any trial starts, a storage path that some alive node of the Ray
    cluster cannot write, or does not share with the driver (a folder on the head node
    only). Nothing to do on a one-node cluster."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")] if ray.is_initialized() else []
    if len(nodes) <= 1:
        return
    token_name, token = f"{PROBE_PREFIX}driver-{uuid.uuid4().hex}", uuid.uuid4().hex
    write_text(join(root, token_name), token)
    try:
        remote = ray.remote(num_cpus=0)(_node_probe)   # (.options() returns a wrapper without .options)
        refs = [remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(root, token_name, token) for n in nodes]
        results = ray.get(refs, timeout=120)
    finally:
        delete(join(root, token_name))
    bad = [f"node {ip} {problem}" for ip, problem in results if problem is not None]
    if bad:
        where = "a folder local to the driver's node" if not is_uri(root) else "storage some nodes cannot use"
        raise StorageError(f"{key}: {root} is {where}: " + "; ".join(bad) + f". {ADVICE}")
