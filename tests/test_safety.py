"""Safety defaults: YAML safe loading only, trust_remote_code off and logged when on, no
pickle from user files, loopback binds for everything xalign starts."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest
import torch

from xalign.config import load_run
from xalign.config.loader import ConfigError

PACKAGE = Path(__file__).resolve().parents[1] / "xalign"


def calls(name: str):
    """(file, ast.Call) for every call of ``name`` (e.g. 'yaml.load') in the package."""
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == name:
                yield path, node


def keyword(node: ast.Call, key: str):
    return next((ast.unparse(k.value) for k in node.keywords if k.arg == key), None)


def test_yaml_is_read_with_a_safe_loader_only(tmp_path):
    assert not list(calls("yaml.unsafe_load")) and not list(calls("yaml.full_load"))
    for path, node in calls("yaml.load"):
        assert keyword(node, "Loader") == "_Loader", f"{path}:{node.lineno}"
    from xalign.config.loader import _Loader
    import yaml

    assert issubclass(_Loader, yaml.SafeLoader)
    bad = tmp_path / "run.yaml"
    bad.write_text("name: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(ConfigError):
        load_run(bad)
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


def test_no_pickle_from_user_files(tmp_path):
    import pickle  # noqa: F401  (only to name it below)

    assert not list(calls("pickle.load")) and not list(calls("pickle.loads"))
    for path, node in calls("torch.load"):
        assert keyword(node, "weights_only") == "True", f"{path}:{node.lineno}"
    # A checkpoint whose state file carries an arbitrary object is refused, not executed.
    from xalign.train.checkpoint import STATE_FILE, load_checkpoint

    class Payload:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    from safetensors.torch import save_file

    model = torch.nn.Linear(1, 1)
    (tmp_path / "ckpt" / "model").mkdir(parents=True)
    save_file(model.state_dict(), tmp_path / "ckpt" / "model" / "model.safetensors")
    torch.save({"step": 1, "optimizer": Payload()}, tmp_path / "ckpt" / STATE_FILE)
    with pytest.raises(Exception, match="(?i)weights_only|unpickl|unsupported"):
        load_checkpoint(tmp_path / "ckpt", model=model, optimizer=None, scheduler=None, objective=None)
    assert not (tmp_path / "pwned").exists()


def test_remote_code_is_off_by_default_and_logged_when_on(tiny_world, caplog):
    from xalign.config.schema import ModelConfig
    from xalign.model import load_tokenizer

    assert ModelConfig().trust_remote_code is False
    with caplog.at_level(logging.WARNING, logger="xalign"):
        load_tokenizer(ModelConfig(name_or_path="world", trust_remote_code=True), tiny_world[1])
    assert "trust_remote_code is on" in caplog.text


def test_ray_instances_xalign_starts_bind_the_dashboard_to_loopback():
    found = list(calls("ray.init"))
    assert found
    for path, node in found:
        assert keyword(node, "dashboard_host") == "'127.0.0.1'", f"{path}:{node.lineno}"
