"""The ``xalign`` command: thin wrappers over the library, errors without tracebacks
(``--debug`` shows them)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

from xalign.errors import XalignError


class UserError(XalignError):
    """A problem the user can fix (bad config, bad path): printed without a traceback."""


def _cmd_validate(args: argparse.Namespace) -> int:
    from xalign.config import flatten, load_run
    from xalign.config.loader import load_raw
    from xalign.config.sweep import SWEEP_KEYS, load_sweep

    if any(key in load_raw(args.file).data for key in SWEEP_KEYS):
        sweep = load_sweep(args.file, args.overrides)
        print(f"OK: {args.file} is a valid sweep ({len(sweep.search)} searched keys, "
              f"{sweep.tune.num_samples} trials, objectives {', '.join(sweep.tune.metrics)}).")
        return 0
    cfg = load_run(args.file, args.overrides)
    print(f"OK: {args.file} is a valid run config ({len(flatten(cfg))} keys).")
    return 0


def _world_config(args: argparse.Namespace):
    from xalign.config import flatten, from_overrides, load_run
    from xalign.config.world import WorldConfig

    if args.config:
        base = load_run(args.config).data.world.model_dump(mode="json")
        base_args = [f"{k}={json.dumps(v)}" for k, v in flatten(base).items()]
        return from_overrides(WorldConfig, [*base_args, *args.overrides], source=str(args.config))
    return from_overrides(WorldConfig, args.overrides, source="world parameters")


def _cmd_world_build(args: argparse.Namespace) -> int:
    cfg = _world_config(args)  # validate before importing torch and transformers
    from xalign.synthetic import build_world
    from xalign.synthetic.base_model import BASE_MODEL_STAGE

    out = Path(args.out) if args.out else None
    stages = [] if args.no_model else [BASE_MODEL_STAGE]
    start = time.perf_counter()
    result = build_world(cfg, out, extra_stages=stages)
    seconds = time.perf_counter() - start
    manifest = result.manifest
    verb = "Reused" if result.reused else "Built"
    print(f"{verb} world {manifest['content_hash'][:16]} in {seconds:.1f}s: {result.path}")
    heldout = manifest["parts"].get("base_model", {}).get("heldout_loss", {})
    for lang in manifest["languages"]:
        pivot = " (pivot)" if lang["is_pivot"] else ""
        loss = f", base model held-out loss {heldout[lang['code']]:.3f}" if lang["code"] in heldout else ""
        print(f"  {lang['code']}{pivot}: {lang['script']} script, {lang['order']}, "
              f"{lang['corpus_tokens']:,} corpus tokens ({lang['corpus_share']:.1%}){loss}")
    print(f"  parts: {', '.join(manifest['stages'])}")
    print(f"  manifest: {result.path / 'manifest.json'}")
    return 0


class Stopped(SystemExit):
    """SIGTERM (`ray job stop`, a scheduler's preemption): unwinds like Ctrl-C so runs are
    ended KILLED before the process goes (Ray sends SIGKILL a few seconds later)."""


def _stop_on_sigterm() -> None:
    import signal

    def stop(signum, frame):
        raise Stopped(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def _cmd_train(args: argparse.Namespace) -> int:
    from xalign import progress
    from xalign.config import load_run

    cfg = load_run(args.file, args.overrides)
    _stop_on_sigterm()
    progress.note(f"Training {cfg.name}: {cfg.optim.max_steps} steps on {cfg.scaling.num_workers} Ray Train worker(s) "
                  "(starting: loading torch and Ray)")
    from xalign.train.driver import train

    result = train(cfg)
    losses = ", ".join(f"{k}={v:.4f}" for k, v in sorted(result.metrics.items()) if k.startswith("train/loss"))
    print(f"Finished {result.steps} steps: {losses}")
    if result.evaluation is not None:
        print(result.evaluation.table)
    print(f"  final model (HF format): {result.checkpoint_path}/model")
    print(f"  run directory: {result.run_path}")
    if result.mlflow_run_id:
        from xalign.tracking import ui_link

        command, url = ui_link(cfg.tracking, run_id=result.mlflow_run_id)
        print(f"  MLflow run {result.mlflow_run_id}: {command + ', then open ' if command else 'open '}{url}")
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from xalign.config import load_run

    cfg = load_run(args.file, args.overrides)   # validated before torch is imported
    from xalign.synthetic import run_world
    from xalign.train.plan import run_plan

    world_dir = run_world(cfg) if cfg.model.name_or_path == "world" else None
    plan, shape, refusal = run_plan(cfg, world_dir)
    print(f"{cfg.model.name_or_path}: {shape.params:,} parameters, {shape.layers} blocks, hidden {shape.hidden}, "
          f"vocabulary {shape.vocab:,}" + (f", {shape.lora_params:,} LoRA parameters" if cfg.model.lora else "")
          + (f", {shape.frozen_params:,} frozen (model.freeze)" if shape.frozen_params and not cfg.model.lora else ""))
    print("\n".join(plan.lines()))
    if refusal:
        print(f"REFUSED: {refusal}")
        return 1
    print("OK: the plan fits.")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from xalign.config import from_overrides, load_run
    from xalign.config.schema import RunConfig

    if args.file is not None and "=" in args.file and not args.file.endswith((".yaml", ".yml")):
        args.overrides.insert(0, args.file)  # `xalign eval --model M key=value`: no file given
        args.file = None
    if args.file is None and args.model is None:
        raise UserError("give a run config (RUN.yaml) or --model PATH")
    overrides = list(args.overrides)
    if args.tasks:
        overrides.append(f"eval.tasks=[{', '.join(args.tasks)}]")
    if args.languages:
        overrides.append(f"eval.languages=[{', '.join(args.languages)}]")
    if args.shots is not None:
        overrides.append(f"eval.shots={args.shots}")
    if args.split:
        overrides.append(f"eval.split={args.split}")
    if args.model:
        overrides.append(f"model.name_or_path={args.model}")
    cfg = load_run(args.file, overrides) if args.file else from_overrides(RunConfig, overrides)
    from xalign import progress

    progress.note(f"Evaluating {cfg.model.name_or_path} on {', '.join(cfg.eval.tasks)} "
                  "(starting: loading torch and the model)")
    from xalign.evaluate import run_evaluation

    result = run_evaluation(cfg, out_dir=Path(args.out) if args.out else None)
    print(result.table)
    for key in ("align/retrieval/top1", "align/mexa"):
        if key in result.metrics:
            print(f"{key}: {100 * result.metrics[key]:.1f}")
    print(f"({result.seconds:.1f}s; records and plots: {result.files[0].parent if result.files else '-'})")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from xalign.config.sweep import load_sweep

    sweep = load_sweep(args.file, args.overrides)
    _stop_on_sigterm()
    from xalign import progress

    confirm = sweep.confirm.runs()
    progress.note(f"Sweep {args.name or sweep.name}: {sweep.tune.num_samples} trials, then {confirm} confirmation runs "
                  "(starting: loading torch, Ray and the sweep's world)")
    from xalign.sweep.report import summary
    from xalign.sweep.runner import run_sweep

    result = run_sweep(sweep, sweep_file=Path(args.file), name=args.name, resume=args.resume)
    print(summary(result, sweep))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from xalign.config import from_overrides
    from xalign.config.schema import TrackingConfig
    from xalign.paths import reports_dir
    from xalign.sweep.report import report

    tracking = from_overrides(TrackingConfig, args.overrides, source="tracking settings")
    print(report(tracking, args.name, out_dir=Path(args.out) if args.out else reports_dir(args.name)))
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from xalign.sweep.compare import comparison_table, variants_from_folders

    variants = variants_from_folders(args.runs)
    print(comparison_table(variants, args.pivot).text())
    return 0


VERBOSE_HELP = ("show Ray's own output (and other libraries' progress bars) live; by default it goes to a log "
                "file whose path is printed")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xalign", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check a run config file and exit non-zero listing every problem")
    p.add_argument("file")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=_cmd_validate)

    world = sub.add_parser("world", help="the built-in synthetic multilingual world")
    world_sub = world.add_subparsers(dest="world_command", required=True)
    p = world_sub.add_parser("build", help="build (or reuse from cache) a synthetic world")
    p.add_argument("--out", help="output directory (default: the cache, by content hash)")
    p.add_argument("--config", help="take the world parameters from a run config's data.world")
    p.add_argument("--no-model", action="store_true", help="build the data only, not the base model")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="world parameters, e.g. seed=1 languages=5")
    p.set_defaults(func=_cmd_world_build)

    p = sub.add_parser("train", help="run one alignment run on Ray Train (local, or the cluster in RAY_ADDRESS)")
    p.add_argument("file")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("plan", help="print a run's memory plan per worker (weights, gradients, optimizer, "
                       "activations) and whether it fits; starts nothing")
    p.add_argument("file")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser("sweep", help="Ray Tune + Optuna over a sweep file; trials are Ray Train runs")
    p.add_argument("file")
    p.add_argument("--resume", action="store_true", help="continue a sweep whose driver was stopped")
    p.add_argument("--name", help="the sweep's name (default: the file's `name`)")
    p.add_argument("overrides", nargs="*", metavar="key=value", default=[])
    p.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("report", help="a finished sweep from MLflow: trials table, best config, plots")
    p.add_argument("name", help="the sweep's name")
    p.add_argument("--out", help="where plots go (default: $XALIGN_HOME/reports/<name>)")
    p.add_argument("overrides", nargs="*", metavar="key=value", default=[],
                   help="tracking settings, e.g. tracking_uri=sqlite:///mlflow.db experiment=xalign")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("compare", help="`xalign eval` results side by side, per task and language, each difference "
                                       "with its item count and paired standard error")
    p.add_argument("runs", nargs="+", metavar="NAME=FOLDER",
                   help="an `xalign eval` results folder under a name; a name given twice is two seeds of one config; "
                        "'base' is compared with every other, 'best' with every other but base")
    p.add_argument("--pivot", default="en", help="the language apart from the others (default en)")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("eval", help="evaluate a model: accuracy per task and language, the gap, alignment metrics")
    p.add_argument("file", nargs="?", help="a run config (its model, data and eval sections)")
    p.add_argument("--model", help="a model to evaluate instead of the config's (HF id or local path)")
    p.add_argument("--tasks", nargs="+")
    p.add_argument("--languages", nargs="+")
    p.add_argument("--shots", type=int)
    p.add_argument("--split", choices=["dev", "test"])
    p.add_argument("--out", help="where records and plots go (default: $XALIGN_HOME/eval_results/<run name>-<time>)")
    p.add_argument("overrides", nargs="*", metavar="key=value", default=[])
    p.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    p.set_defaults(func=_cmd_eval)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may also follow options (`xalign eval RUN.yaml --model M a.b=1`).
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any("=" not in e or e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    import logging
    import os

    from xalign import progress

    if getattr(args, "verbose", False):
        os.environ["XALIGN_VERBOSE"] = "1"     # read by xalign.train.console, in this process and in Ray jobs
    else:
        progress.quiet_library_bars()
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[xalign] %(message)s"))
    logging.getLogger("xalign").addHandler(handler)
    logging.getLogger("xalign").setLevel(logging.INFO)
    try:
        return args.func(args)
    except XalignError as exc:
        if args.debug:
            raise
        print(f"xalign {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # Ctrl-C is the user's choice, not an error: one line, no traceback (--debug shows it),
        # and the shell's exit status for SIGINT.
        if args.debug:
            raise
        print(f"\nxalign {args.command}: interrupted (Ctrl-C)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
