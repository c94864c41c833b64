"""GGUF files without the real model: the header reader (what it reads, what it refuses),
the content hash that keys the cache (streamed sha256, remembered by path, size and mtime),
and which cache entries count as converted. Conversion itself runs on the real model in
tests/integration/test_realmodel.py."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

gguf = pytest.importorskip("gguf", reason="the gguf package (pip install 'xalign[gguf]') is not installed")

from xalign.model.gguf import (  # noqa: E402
    CONVERT_VERSION,
    MARKER,
    GgufError,
    cached_folder,
    cached_gguf_folder,
    check_gguf,
    ensure_converted,
    file_sha256,
    gguf_cache_home,
    is_gguf,
    read_header,
)


def make_gguf(path: Path, architecture: str = "llama", rows: int = 256, blocks: int = 2) -> Path:
    import numpy as np

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(blocks)
    writer.add_string("general.name", "tiny")
    writer.add_array(f"{architecture}.some_list", ["a", "bb", "ccc"])
    writer.add_tensor("token_embd.weight", np.arange(rows * 64, dtype=np.float32).reshape(rows, 64))
    writer.add_tensor("output_norm.weight", np.ones(64, dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_the_header_gives_architecture_blocks_and_where_the_data_ends(tmp_path):
    path = make_gguf(tmp_path / "m.gguf", blocks=3)
    info = read_header(str(path))
    assert (info.architecture, info.block_count, info.tensor_count) == ("llama", 3, 2)
    assert info.metadata["general.name"] == "tiny" and info.metadata["llama.some_list"] == 3
    assert info.data_end <= info.size == path.stat().st_size
    assert check_gguf(str(path)).architecture == "llama"
    assert is_gguf("A.GGUF") and not is_gguf("org/model") and not is_gguf(None)


@pytest.mark.parametrize("cut", [10, 40, 300, -100])
def test_a_file_cut_anywhere_is_refused_as_truncated(tmp_path, cut):
    data = make_gguf(tmp_path / "m.gguf").read_bytes()
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[:cut])
    with pytest.raises(GgufError, match=r"cut\.gguf (ends inside its GGUF header|is truncated)"):
        check_gguf(str(path))


def test_not_gguf_unknown_architecture_and_missing_file(tmp_path):
    (tmp_path / "zip.gguf").write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(GgufError, match=r"zip\.gguf is not a GGUF file"):
        check_gguf(str(tmp_path / "zip.gguf"))
    make_gguf(tmp_path / "r.gguf", architecture="rwkv6")
    with pytest.raises(GgufError, match=r"'rwkv6' model, which transformers cannot read from GGUF"):
        check_gguf(str(tmp_path / "r.gguf"))
    with pytest.raises(GgufError, match=r"nothere\.gguf does not exist \(.*r\.gguf.*\)"):
        check_gguf(str(tmp_path / "nothere.gguf"))


def test_the_cache_key_is_the_content_hash_and_the_dtype(tmp_path, monkeypatch):
    monkeypatch.setenv("XALIGN_HOME", str(tmp_path / "home"))
    a = make_gguf(tmp_path / "a.gguf")
    assert file_sha256(str(a), progress=False) == hashlib.sha256(a.read_bytes()).hexdigest()
    index = json.loads((gguf_cache_home() / "hashes.json").read_text())
    assert list(index.values()) == [hashlib.sha256(a.read_bytes()).hexdigest()]
    moved = tmp_path / "elsewhere" / "b.gguf"
    moved.parent.mkdir()
    moved.write_bytes(a.read_bytes())                       # the same content, another name
    sha_a, sha_b = file_sha256(str(a), progress=False), file_sha256(str(moved), progress=False)
    assert sha_a == sha_b and cached_folder(sha_a, "fp32") == cached_folder(sha_b, "fp32")
    assert cached_folder(sha_a, "fp32") != cached_folder(sha_a, "bf16")
    make_gguf(moved, rows=128)                              # changed in place: size and mtime differ
    assert file_sha256(str(moved), progress=False) != sha_a


def test_only_a_complete_entry_is_used(tmp_path, monkeypatch):
    monkeypatch.setenv("XALIGN_HOME", str(tmp_path / "home"))
    path = str(make_gguf(tmp_path / "a.gguf"))
    folder = cached_folder(file_sha256(path, progress=False), "fp32")
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")               # what a killed conversion leaves
    assert cached_gguf_folder(path, "fp32") is None
    (folder / MARKER).write_text(json.dumps({"version": CONVERT_VERSION - 1}))   # an older conversion
    assert cached_gguf_folder(path, "fp32") is None
    (folder / MARKER).write_text(json.dumps({"version": CONVERT_VERSION}))
    assert cached_gguf_folder(path, "fp32") == folder
    assert ensure_converted(path, "fp32", progress=False) == folder   # a hit: nothing converted
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", MARKER]


def test_a_gguf_path_in_a_config_becomes_absolute(tmp_path, monkeypatch):
    from xalign.config import from_overrides
    from xalign.config.schema import RunConfig

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "g.gguf").write_bytes(b"GGUF")   # a missing one is refused (tests/test_bad_inputs.py)
    cfg = from_overrides(RunConfig, ["model.name_or_path=models/g.gguf"])
    assert cfg.model.name_or_path == os.path.join(str(tmp_path), "models", "g.gguf")


def test_ray_workers_get_the_drivers_xalign_home(monkeypatch, tmp_path):
    """The converted folder (and the data cache) the driver filled is where workers look,
    even on a cluster started with another environment."""
    from xalign.train.cluster import _job_env

    monkeypatch.setenv("XALIGN_HOME", str(tmp_path))
    assert _job_env("127.0.0.1:6379")["env_vars"] == {"RAY_ADDRESS": "127.0.0.1:6379", "XALIGN_HOME": str(tmp_path)}
    assert _job_env("local") == {"env_vars": {"XALIGN_HOME": str(tmp_path)}}
    monkeypatch.delenv("XALIGN_HOME")
    assert _job_env("local") is None


def test_a_submitted_jobs_own_variables_are_not_set_again(monkeypatch, tmp_path):
    """Under `ray job submit`, Ray refuses a driver runtime_env that sets a variable the job's
    runtime_env already sets ("Failed to merge the Job's runtime env"): those reach the
    workers anyway, so the driver leaves them out."""
    import json

    from xalign.train.cluster import _job_env

    monkeypatch.setenv("XALIGN_HOME", str(tmp_path))
    job = {"runtime_env": {"working_dir": "gcs://pkg.zip", "env_vars": {"XALIGN_HOME": "/shared/home"}}, "metadata": {}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(job))
    assert _job_env("127.0.0.1:6379") == {"env_vars": {"RAY_ADDRESS": "127.0.0.1:6379"}}
    job["runtime_env"]["env_vars"]["RAY_ADDRESS"] = "127.0.0.1:6379"
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(job))
    assert _job_env("127.0.0.1:6379") is None
    job["runtime_env"].pop("env_vars")   # a job that sets neither: the driver sets both
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(job))
    assert _job_env("127.0.0.1:6379")["env_vars"] == {"RAY_ADDRESS": "127.0.0.1:6379", "XALIGN_HOME": str(tmp_path)}
