"""One path rule: relative paths in a config file resolve against that file's folder (as
``extends`` does), on the command line against the working directory; `xalign eval` writes
under $XALIGN_HOME, not into the folder it runs in."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from xalign.config import ConfigError, load_run
from xalign.config.sweep import load_sweep


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def layout(tmp_path, monkeypatch):
    """configs/base.yaml (real tasks from local files) and configs/runs/run.yaml (pairs), with
    the data next to each file; the working directory elsewhere."""
    _write(tmp_path / "configs" / "data" / "pawsx_dev.tsv", "id\tsentence1\tsentence2\tlabel\n")
    _write(tmp_path / "configs" / "runs" / "pairs.tsv", "src\ttgt\tsrc_lang\ttgt_lang\n")
    _write(tmp_path / "configs" / "base.yaml", """
name: base
eval:
  tasks: [pawsx]
  sources:
    pawsx: {dev: data/pawsx_dev.tsv, test: "data/pawsx_{lang}.tsv", languages: {en: {dev: data/pawsx_dev.tsv}}}
model: {name_or_path: ./data, tokenizer: org/name}
""")
    run = _write(tmp_path / "configs" / "runs" / "run.yaml", """
extends: ../base.yaml
data: {pairs: {path: pairs.tsv}, pivot: en, languages: [zh]}
""")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return tmp_path, run


def test_relative_paths_resolve_against_the_file_that_sets_them(layout):
    root, run = layout
    cfg = load_run(run)
    configs = root / "configs"
    assert cfg.data.pairs.path == str(configs / "runs" / "pairs.tsv")        # run.yaml's folder
    pawsx = cfg.eval.sources["pawsx"]
    assert pawsx.dev == str(configs / "data" / "pawsx_dev.tsv")              # base.yaml's folder
    assert pawsx.test == str(configs / "data" / "pawsx_{lang}.tsv")
    assert pawsx.languages["en"].dev == str(configs / "data" / "pawsx_dev.tsv")
    assert cfg.model.name_or_path == str(configs / "data")                   # ./ = a local path
    assert cfg.model.tokenizer == "org/name"                                  # a hub id stays one


def test_a_relative_path_on_the_command_line_stays_relative_to_the_working_directory(layout):
    root, run = layout
    with pytest.raises(ConfigError, match="does not exist: 'pairs.tsv'"):
        load_run(run, ["data.pairs.path=pairs.tsv"])     # not in elsewhere/
    _write(Path.cwd() / "here.tsv", "src\ttgt\tsrc_lang\ttgt_lang\n")
    assert load_run(run, ["data.pairs.path=here.tsv"]).data.pairs.path == "here.tsv"


def test_sweep_files_follow_the_same_rule(layout):
    root, run = layout
    sweep = _write(root / "configs" / "sweeps" / "s.yaml", """
extends: ../runs/run.yaml
search: {objective.temperature: {float: {low: 0.05, high: 0.2, log: true}}}
tune: {num_samples: 2, metrics: {eval/acc_non_pivot: max}}
""")
    assert load_sweep(sweep).data.pairs.path == str(root / "configs" / "runs" / "pairs.tsv")


def test_xalign_eval_writes_under_xalign_home_not_the_working_directory(tiny_world, tiny_world_overrides,
                                                                       tmp_path, monkeypatch, xalign_home):
    from xalign.config import from_overrides
    from xalign.config.schema import RunConfig
    from xalign.evaluate import run_evaluation

    monkeypatch.chdir(tmp_path)
    cfg = from_overrides(RunConfig, [*(f"data.world.{o}" for o in tiny_world_overrides), "eval.tasks=[facts]",
                                     "eval.max_items=4", "tracking.enabled=false", "tracking.run_name=paths"])
    result = run_evaluation(cfg)
    assert result.files and all(Path(f).is_relative_to(xalign_home / "eval_results" / "paths") for f in result.files)
    assert os.listdir(tmp_path) == []


def test_claim_new_dir_never_hands_out_a_folder_twice(tmp_path):
    from xalign.paths import claim_new_dir

    first = claim_new_dir(tmp_path / "runs" / "eval-x")
    (first / "eval_records.jsonl").write_text("kept")
    second, third = claim_new_dir(tmp_path / "runs" / "eval-x"), claim_new_dir(tmp_path / "runs" / "eval-x")
    assert [first.name, second.name, third.name] == ["eval-x", "eval-x-2", "eval-x-3"]
    assert (first / "eval_records.jsonl").read_text() == "kept" and not any(second.iterdir())
