"""Storage paths (local, shared mount, s3://, gs://, file://) and the checks run before a run
or sweep writes anything: the path is writable, the Ray address answers."""

from __future__ import annotations

import socket

import pytest

from xalign import storage
from xalign.train.cluster import TrainingError, check_ray_address


def test_uris_keep_their_scheme_and_local_paths_become_absolute(tmp_path, monkeypatch):
    assert storage.join("s3://bucket/xalign/", "demo", "trials") == "s3://bucket/xalign/demo/trials"
    assert storage.resolve("gs://b/p") == "gs://b/p"
    monkeypatch.chdir(tmp_path)
    assert storage.resolve("runs") == str(tmp_path / "runs")
    assert storage.join(str(tmp_path), "demo") == str(tmp_path / "demo")


def test_files_round_trip_through_a_uri_and_a_local_path(tmp_path):
    for root in (f"file://{tmp_path}/uri", str(tmp_path / "local")):
        path = storage.join(root, "sweep", "state.json")
        assert not storage.exists(path)
        storage.write_text(path, '{"a": 1}')
        assert storage.exists(path) and storage.read_text(path) == '{"a": 1}'
    assert (tmp_path / "uri" / "sweep" / "state.json").is_file()


def test_an_unwritable_storage_path_is_refused_naming_the_key_and_path(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(storage.StorageError, match=rf"checkpoint.storage_path: the driver cannot write to it .*"
                                                   rf"{blocker}/ckpt"):
        storage.check_storage(str(blocker / "ckpt"))
    storage.check_storage(str(tmp_path / "fine"))            # a new folder is fine, and no probe is left
    assert [p.name for p in (tmp_path / "fine").iterdir()] == []


def test_a_ray_address_where_nothing_answers_fails_in_seconds():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]        # closed again at the end of the block: nothing listens
    with pytest.raises(TrainingError, match=rf"RAY_ADDRESS=127.0.0.1:{port}: no Ray cluster answers there"):
        check_ray_address(f"127.0.0.1:{port}", timeout=2)
    with pytest.raises(TrainingError, match="is a dashboard .*address; the driver needs the cluster's GCS address"):
        check_ray_address("http://127.0.0.1:8265")
    with pytest.raises(TrainingError, match="is not host:port"):
        check_ray_address("my-cluster")
    check_ray_address("auto")
