"""Config loading: extends, overrides, and error reports that list every problem at once."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from xalign.config import ConfigError, RunConfig, flatten, load_run
from xalign.config.loader import parse_scalar

REPO = Path(__file__).resolve().parents[1]
SWEEPS = sorted((REPO / "configs").glob("**/*.yaml"))


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems_of(path: Path, overrides=()) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_run(path, overrides)
    return [str(p) for p in info.value.problems]


def is_sweep_file(path: Path) -> bool:
    """A sweep file has a search, tune or confirm section (its own, not an extended file's)."""
    import yaml

    from xalign.config.sweep import SWEEP_KEYS

    data = yaml.safe_load(path.read_text()) or {}
    return any(key in data for key in SWEEP_KEYS)


def _text_with_extends(path: Path) -> str:
    """A config file's text and that of the files it extends."""
    import yaml

    text = path.read_text()
    extends = (yaml.safe_load(text) or {}).get("extends") or []
    for parent in [extends] if isinstance(extends, str) else extends:
        text += _text_with_extends((path.parent / parent).resolve())
    return text


@pytest.mark.parametrize("path", SWEEPS, ids=[p.name for p in SWEEPS])
def test_every_yaml_under_sweeps_validates(path):
    """Run files as run configs; sweep files (search/tune/confirm) as sweeps, which also
    checks every search bound and control against the run config. Files that read the
    project's real-data samples (../shared/data/real) are skipped where those are absent."""
    text = _text_with_extends(path)
    if "shared/data/real" in text and not (REPO.parent / "shared" / "data" / "real").is_dir():
        pytest.skip(f"{path.name} reads ../shared/data/real, which this checkout does not have")
    # ../../gemma-3-270m-q4_k_m.gguf (next to the file) or the bare name (the working directory:
    # the repository root here): the same file, which a fresh clone does not have
    if "gemma-3-270m-q4_k_m.gguf" in text and not (REPO / "gemma-3-270m-q4_k_m.gguf").is_file():
        pytest.skip(f"{path.name} reads the Gemma 3 270M GGUF file a user assembles in the repository root "
                    "(README: A real model), which this checkout does not have")
    if is_sweep_file(path):
        from xalign.config.sweep import SweepConfig, load_sweep

        assert isinstance(load_sweep(path), SweepConfig)
    else:
        assert isinstance(load_run(path), RunConfig)


def test_sweeps_folder_is_not_empty():
    assert SWEEPS, "configs/ must hold at least one run config"


def test_defaults_are_the_released_recipe(tmp_path):
    cfg = load_run(write(tmp_path, "defaults.yaml", "name: afp\n"))   # an empty file is refused
    assert (cfg.objective.temperature, cfg.objective.contrastive_weight, cfg.objective.lm_weight) == (0.05, 1.0, 1.5)
    assert (cfg.objective.layer, cfg.objective.pooler, cfg.objective.symmetric) == (1, "last", False)
    assert (cfg.optim.lr, cfg.optim.max_steps, cfg.optim.batch_size, cfg.optim.weight_decay) == (1e-5, 5000, 2, 0.0)
    assert (cfg.optim.schedule, cfg.optim.warmup_ratio, cfg.optim.max_grad_norm) == ("cosine", 0.03, 1.0)
    assert (cfg.data.mix.cross_probability, cfg.data.mix.repeat) == (0.5, 3)
    assert cfg.model.trust_remote_code is False


def test_every_error_is_reported_at_once_with_file_line_and_suggestion(tmp_path):
    path = write(tmp_path, "bad.yaml", """\
objective:
  temprature: 0.1
  temperature: -1
  pooler: avg
optim:
  lr: fast
  max_steps: 0
scaling:
  num_workers: 2
tracking:
  enabled: maybe
""")
    problems = problems_of(path)
    text = "\n".join(problems)
    assert len(problems) == 6, text
    assert f"{path}:2: `objective.temprature`: unknown key. Did you mean 'temperature'?" in text
    assert f"{path}:3: `objective.temperature`: must be > 0, got -1" in text
    assert f"{path}:4: `objective.pooler`: Unknown pooler 'avg'. Did you mean 'mean'? Available: last, max, mean" in text
    assert f"{path}:6: `optim.lr`: must be a number, got 'fast'" in text
    assert f"{path}:7: `optim.max_steps`: must be > 0, got 0" in text
    assert f"{path}:11: `tracking.enabled`: must be true or false, got 'maybe'" in text


def test_unknown_top_level_section_suggests(tmp_path):
    problems = problems_of(write(tmp_path, "a.yaml", "objectve: {temperature: 0.1}\n"))
    assert problems == [f"{tmp_path / 'a.yaml'}:1: `objectve`: unknown key. Did you mean 'objective'? "
                        "Available: checkpoint, data, eval, model, name, objective, optim, scaling, seed, tracking."]


def test_extends_merges_deeply_and_relative_to_the_file(tmp_path):
    (tmp_path / "base").mkdir()
    write(tmp_path / "base", "run.yaml", "objective: {temperature: 0.2, pooler: mean}\noptim: {lr: 1e-4}\n")
    child = write(tmp_path, "child.yaml", "extends: base/run.yaml\nobjective: {temperature: 0.3}\n")
    cfg = load_run(child)
    assert cfg.objective.temperature == 0.3      # child wins
    assert cfg.objective.pooler == "mean"        # the parent's sibling key survives
    assert cfg.optim.lr == 1e-4                  # 1e-4 read as a float, not a string


def test_errors_in_a_parent_name_the_parent_file(tmp_path):
    parent = write(tmp_path, "parent.yaml", "optim:\n  lr: -1\n")
    child = write(tmp_path, "child.yaml", "extends: parent.yaml\n")
    assert problems_of(child) == [f"{parent}:2: `optim.lr`: must be > 0, got -1"]


def test_extends_cycle_is_an_error(tmp_path):
    write(tmp_path, "a.yaml", "extends: b.yaml\n")
    write(tmp_path, "b.yaml", "extends: a.yaml\n")
    problems = problems_of(tmp_path / "a.yaml")
    assert len(problems) == 1 and "`extends` cycle: a.yaml -> b.yaml -> a.yaml" in problems[0]


def test_missing_extends_file_and_missing_model_path(tmp_path):
    path = write(tmp_path, "a.yaml", "extends: nowhere.yaml\nmodel: {name_or_path: ./no/such/model}\n")
    problems = problems_of(path)
    assert any("`extends`: file not found: 'nowhere.yaml'" in p for p in problems)
    # a relative path in a file is relative to the file (as extends is)
    assert any(f"`model.name_or_path`: local path does not exist: '{tmp_path / 'no/such/model'}'" in p
               for p in problems)


def test_missing_file_and_non_mapping_and_duplicate_keys(tmp_path):
    assert problems_of(tmp_path / "nope.yaml") == [f"{tmp_path / 'nope.yaml'}: file not found"]
    assert "the top level must be a mapping" in problems_of(write(tmp_path, "l.yaml", "- 1\n- 2\n"))[0]
    dup = problems_of(write(tmp_path, "d.yaml", "seed: 1\nseed: 2\n"))
    assert dup == [f"{tmp_path / 'd.yaml'}:2: `seed`: duplicate key (YAML would silently keep the last one)"]
    bad = problems_of(write(tmp_path, "s.yaml", "objective: {temperature: [\n"))
    assert bad[0].startswith(f"{tmp_path / 's.yaml'}:") and "invalid YAML" in bad[0]


def test_yaml_is_read_safely(tmp_path):
    path = write(tmp_path, "evil.yaml", "name: !!python/object/apply:os.system ['echo pwned']\n")
    assert "invalid YAML" in problems_of(path)[0]


def test_overrides_parse_types_and_win_over_files(tmp_path):
    path = write(tmp_path, "r.yaml", "objective: {temperature: 0.2}\n")
    cfg = load_run(path, ["objective.temperature=1e-2", "objective.layer=[1, 0.5, -1]",
                          "data.mix.pair_weights={qab: 2}", "eval.tasks=[facts]", "name=exp 1"])
    assert cfg.objective.temperature == 0.01
    assert cfg.objective.layer == [1, 0.5, -1]
    assert cfg.data.mix.pair_weights == {"qab": 2.0}
    assert cfg.eval.tasks == ["facts"]
    assert cfg.name == "exp 1"


def test_override_errors_name_the_override(tmp_path):
    path = write(tmp_path, "r.yaml", "objective: {temperature: 0.2}\n")
    problems = problems_of(path, ["objective.temperature=0", "objective.tempreture=0.1", "oops"])
    assert "override `objective.temperature=0`: `objective.temperature`: must be > 0, got 0" in problems
    assert any(p.startswith("override `objective.tempreture=0.1`") and "Did you mean 'temperature'" in p
               for p in problems)
    assert any("an override must look like key=value" in p for p in problems)


@pytest.mark.parametrize("value, ok", [
    ("1", True), ("-1", True), ("0.5", True), ("0.0", True), ("1.0", True), ("[1, 0.5]", True),
    ("1.5", False), ("-0.5", False), ("true", False), ("middle", False), ("[]", False),
])
def test_layer_ints_are_indices_and_floats_are_fractions(tmp_path, value, ok):
    path = write(tmp_path, "r.yaml", "")
    if ok:
        layer = load_run(path, [f"objective.layer={value}"]).objective.layer
        assert layer == parse_scalar(value) and type(layer) is type(parse_scalar(value))
    else:
        assert any("`objective.layer`" in p for p in problems_of(path, [f"objective.layer={value}"]))


def test_cross_field_rules(tmp_path):
    path = write(tmp_path, "r.yaml", "")
    problems = problems_of(path, ["objective.contrastive_weight=0", "objective.lm_weight=0"])
    assert any("cannot both be 0" in p for p in problems)
    problems = problems_of(path, ["optim.batch_size=1"])
    assert any("at least 2 pairs in the global batch" in p and "1 x 1 = 1" in p for p in problems)
    assert load_run(path, ["optim.batch_size=1", "scaling.num_workers=2"]).optim.batch_size == 1
    problems = problems_of(path, ["scaling.use_gpu=true"])
    assert any("`gpus_per_worker` is 0" in p for p in problems)
    problems = problems_of(path, ["scaling.fsdp_unit=model"])
    assert any("`fsdp_unit` is 'model' but strategy is 'ddp'" in p for p in problems)
    assert load_run(path, ["scaling.fsdp_unit=model", "scaling.strategy=fsdp"]).scaling.fsdp_unit == "model"


def test_flatten_gives_dotted_keys_that_round_trip_as_overrides(tmp_path):
    cfg = load_run(write(tmp_path, "r.yaml", ""), ["objective.temperature=0.3"])
    flat = flatten(cfg)
    assert flat["objective.temperature"] == 0.3 and flat["data.world.seed"] == cfg.data.world.seed
    again = load_run(write(tmp_path, "e.yaml", ""), [f"{k}={v}" for k, v in flat.items()
                                                     if k.startswith("objective.")])
    assert again.objective == cfg.objective


def _cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xalign.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_validate_ok_and_broken_file_fast(tmp_path):
    ok = _cli("validate", str(SWEEPS[0]))
    assert ok.returncode == 0 and ok.stdout.startswith("OK:"), ok.stderr
    bad = write(tmp_path, "bad.yaml", "objective: {pooler: avg, temprature: 1}\noptim: {lr: 0}\n")
    res = _cli("validate", str(bad), "scaling.num_workers=0")
    assert res.returncode == 1
    assert "4 problem(s)" in res.stderr and "Traceback" not in res.stderr
    assert "Did you mean 'mean'?" in res.stderr and "Did you mean 'temperature'?" in res.stderr


def test_cli_debug_shows_the_traceback(tmp_path):
    bad = write(tmp_path, "bad.yaml", "optim: {lr: 0}\n")
    res = _cli("--debug", "validate", str(bad))
    assert res.returncode != 0 and "Traceback" in res.stderr


def test_asha_compares_the_dev_counterpart_or_the_named_proxy(tmp_path):
    from xalign.config.sweep import load_sweep

    run = REPO / "configs" / "runs" / "afp-synthetic.yaml"
    path = write(tmp_path, "s.yaml", f"extends: {run}\neval: {{every_n_steps: 50}}\ntune: {{scheduler: asha}}\n")
    assert load_sweep(path).tune.asha() == ("dev/acc_non_pivot", "max")
    assert load_sweep(path, ["tune.asha_metric=align/mexa", "eval.dev_tasks=false"]).tune.asha() == ("align/mexa", "max")
    assert load_sweep(path, ["tune.asha_metric=train/loss"]).tune.asha() == ("train/loss", "min")
    assert load_sweep(path, ["tune.asha_metric=dev/xcopa/qab/acc"]).tune.asha() == ("dev/xcopa/qab/acc", "max")


def test_compute_use_counts_the_steps_asha_saved():
    from xalign.sweep.report import compute_line
    from xalign.sweep.runner import Trial, compute_use

    trials = [Trial("a", "search", {}, {"step": 100}, "TERMINATED"), Trial("b", "search", {}, {"step": 20}, "STOPPED"),
              Trial("c", "search", {}, {"step": 40}, "STOPPED"), Trial("d", "search", {}, {}, "ERROR"),
              Trial("e", "confirm", {}, {"step": 100}, "TERMINATED")]
    use = compute_use(trials, 100)
    assert use == {"steps_run": 160.0, "steps_full": 300.0, "compute_saved": pytest.approx(140 / 300),
                   "trials_stopped": 2.0}
    assert "ran 160 of 300 trial steps (47% saved" in compute_line(use, "asha")
    assert compute_line(compute_use([], 100), "fifo") == ""


def test_asha_on_held_out_pair_proxies_for_a_real_data_run(tmp_path):
    """align/mexa is reported periodically by a non-world run only when data.pairs holds pairs out."""
    from xalign.config.sweep import load_sweep, periodic_metrics

    (tmp_path / "pairs.jsonl").write_text('{"src": "a", "tgt": "b", "src_lang": "en", "tgt_lang": "de"}\n')
    run = write(tmp_path, "run.yaml", "model: {name_or_path: gpt2}\n"
                "data: {pivot: en, languages: [de], pairs: {path: pairs.jsonl, heldout: 10}}\n"
                "eval: {tasks: [xcopa], every_n_steps: 50, dev_tasks: false}\n")
    assert {"align/mexa", "align/retrieval/top1"} <= periodic_metrics(load_run(run))
    assert "align/mexa" not in periodic_metrics(load_run(run, ["data.pairs.heldout=0"]))
    sweep = write(tmp_path, "s.yaml", "extends: run.yaml\ntune: {scheduler: asha, asha_metric: align/mexa}\n")
    assert load_sweep(sweep).tune.asha() == ("align/mexa", "max")
    with pytest.raises(ConfigError) as info:
        load_sweep(sweep, ["data.pairs.heldout=0"])
    assert "tune.asha_metric" in str(info.value) and "data.pairs.heldout" in str(info.value)


def test_eval_protocol_is_one_name_or_a_list(tmp_path):
    from xalign.config.sweep import load_sweep

    run = REPO / "configs" / "runs" / "afp-synthetic.yaml"
    assert load_run(run).eval.protocols == ["cross"] and load_run(run).eval.protocol == "cross"   # param unchanged
    both = load_run(run, ["eval.protocol=[cross, same]"])
    assert both.eval.protocols == ["cross", "same"] and flatten(both)["eval.protocol"] == ["cross", "same"]
    for value, why in (("sam", r"got 'sam' \('sam' is not a protocol\)\. Did you mean 'same'\?"),
                       ("[cross, cross]", r"got \[.cross., .cross.\] \(a protocol is listed twice\)"),
                       ("[]", r"got \[\] \(an empty list\)")):
        found = problems_of(run, [f"eval.protocol={value}"])
        assert len(found) == 1 and re.search(r"`eval\.protocol`: must be 'cross' or 'same', or a list of them to "
                                             r"evaluate each \(e\.g\. \[cross, same\]\); " + why, found[0]), found
    # the other protocol's final metrics (eval_same/...) are objectives a sweep may name
    sweep = write(tmp_path, "s.yaml", f"extends: {run}\ntune: {{metrics: {{eval_same/acc_non_pivot: max, "
                                      f"eval_same/xcopa/qab/acc: max}}}}\n")
    assert list(load_sweep(sweep, ["eval.protocol=[cross, same]"]).tune.metrics) == [
        "eval_same/acc_non_pivot", "eval_same/xcopa/qab/acc"]
    with pytest.raises(ConfigError, match=r"no trial reports 'eval_same/acc_non_pivot'"):
        load_sweep(sweep)


def test_controls_may_run_with_fewer_seeds_and_search_trials_may_skip_the_test_eval(tmp_path):
    from xalign.config.sweep import load_sweep

    run = REPO / "configs" / "runs" / "afp-synthetic.yaml"
    path = write(tmp_path, "s.yaml", f"extends: {run}\neval: {{every_n_steps: 50}}\n"
                 "confirm: {seeds: [0, 1], controls: {no_lm: {objective.lm_weight: 0}, "
                 "no_contrastive: {objective.contrastive_weight: 0}}}\n")
    sweep = load_sweep(path)
    assert sweep.confirm.seeds_of_controls() == [0, 1] and sweep.confirm.runs() == 6
    sweep = load_sweep(path, ["confirm.control_seeds=[0]"])
    assert sweep.confirm.seeds_of_controls() == [0] and sweep.confirm.runs() == 4
    assert load_sweep(path, ["confirm.seeds=[]"]).confirm.runs() == 0
    # final_eval: false needs objectives that a search trial still reports (dev/ or align/)
    assert not load_sweep(path, ["tune.final_eval=false", "tune.metrics={dev/acc_non_pivot: max}"]).tune.final_eval
    with pytest.raises(ConfigError, match=r"tune\.final_eval.*is false.*'eval/acc_non_pivot'"):
        load_sweep(path, ["tune.final_eval=false"])
