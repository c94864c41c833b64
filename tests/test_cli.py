"""The command line refuses bad input with a one-paragraph error, exit 1, no traceback, and
writes nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def xalign(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xalign.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("overrides, message", [
    (["languages=0"], "`languages`: must be >= 2, got 0"),
    (["corpus.pivot_share=1.5"], "`corpus.pivot_share`: must be < 1.0, got 1.5"),
    (["corpus.shares=[0.5, 0.7, 0.1, 0.1]"], "corpus.shares must sum to 1"),
    (["facts.anchor_people=500"], "facts.anchor_people must be <= facts.people"),
    (["langauges=5"], "Did you mean 'languages'?"),
])
def test_world_build_with_impossible_parameters_fails_and_writes_nothing(tmp_path, overrides, message):
    res = xalign("world", "build", "--out", str(tmp_path / "w"), *overrides, cwd=tmp_path)
    assert res.returncode == 1 and message in res.stderr and "Traceback" not in res.stderr
    assert list(tmp_path.iterdir()) == []


def test_world_build_into_a_file_fails_and_leaves_it_alone(tmp_path):
    target = tmp_path / "file"
    target.write_text("keep me")
    res = xalign("world", "build", "--no-model", "--out", str(target), cwd=tmp_path)
    assert res.returncode == 1 and "exists and is not a directory" in res.stderr
    assert target.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_world_build_cli_builds_then_reuses(tmp_path):
    out = tmp_path / "w"
    args = ("world", "build", "--no-model", "--out", str(out), "corpus.tokens=20000",
            "pairs.train_per_language=50", "instructions.items=30", "tasks.test_items=20", "tasks.dev_items=10")
    first = xalign(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("Built world") and "qac: Greek script, SVO" in first.stdout
    again = xalign(*args, cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.startswith("Reused world")


@pytest.mark.slow
def test_train_with_a_bad_config_fails_before_starting_anything(tmp_path):
    res = xalign("train", str(REPO / "configs/runs/afp-synthetic.yaml"), "objective.temperature=0",
                 "objective.pooler=avg", cwd=tmp_path)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "`objective.temperature`: must be > 0, got 0" in res.stderr
    assert "Unknown pooler 'avg'. Did you mean 'mean'?" in res.stderr
    # Cross-field rules run once the fields they read are valid.
    res = xalign("train", str(REPO / "configs/runs/afp-synthetic.yaml"), "optim.batch_size=1", cwd=tmp_path)
    assert res.returncode == 1 and "at least 2 pairs in the global batch" in res.stderr
    assert list(tmp_path.iterdir()) == []          # no mlflow.db, no ray_results


def test_ctrl_c_ends_a_command_with_one_line_and_the_sigint_status(tmp_path, monkeypatch, capsys):
    """Ctrl-C (here raised inside the command) is not an error: no traceback, status 130."""
    from xalign import cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_cmd_validate", interrupted)
    path = tmp_path / "run.yaml"
    path.write_text("name: x\n")
    assert cli.main(["validate", str(path)]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "xalign validate: interrupted (Ctrl-C)" and "Traceback" not in err
