#!/usr/bin/env python
"""ICL scoring throughput: xalign's scorer against baselines measured in the same run.

For each number of shots (default 0 and 5) four settings score the same XCOPA-shaped
multiple-choice items with the same model object and tokenizer:

- ``naive``: every option of every item scored on its own full prompt (prefix + context +
  option), prefix recomputed, batch 1 (as the paper's released code did). The baseline.
- ``xalign-no-reuse``: ``xalign.eval.scoring.score_items(..., reuse_prefix=False)``:
  batched, longest first, every request from scratch (separates batching from reuse).
- ``xalign``: ``score_items`` as the evaluator runs it: batched, the shared few-shot prefix
  run once and its KV cache reused.
- ``lm-eval``: lm-evaluation-harness 0.4.13 ``HFLM.loglikelihood`` over the same
  (context, continuation) requests, wrapping the same model object, same batch size.
- ``xalign-full-vocab``: ``score_items(..., full_vocab=True)``: as ``xalign`` but the LM
  head runs at every position, as before xalign ran it at the read positions only (the
  baseline of the large-vocabulary ratio).
- ``xalign-bf16``: ``xalign`` with the model's weights in bf16 (against ``xalign`` in fp32).
- ``xalign-bf16-full-vocab``: ``xalign-full-vocab`` with bf16 weights (the large-vocabulary
  ratio in bf16, the dtype the Gemma run files use on a CPU with native bf16).

``--model gemma3-270m`` runs the real Gemma 3 270M (262k vocabulary; benchmarks/real_model.py:
the model package's GGUF converted by xalign, or ``--model-path``) with its own tokenizer on
real English COPA rows (``--xcopa``, default ../shared/data/real/xcopa), instead of a random
model on synthetic rows; its default settings are xalign, xalign-full-vocab, xalign-bf16 and
lm-eval.

Items: synthetic XCOPA rows (pseudo-words, Zipf-distributed, sentence lengths like real
XCOPA's) rendered by xalign's own XCOPA task (template "afp": "cause: <premise> because",
option " <choice>"), k demonstrations from the dev split, lm-eval's "\\n\\n" between them.
Tokenizer: a byte-level BPE trained here on that text, adding <s> like Llama's. Model: a
preset shape (or ``--model-config``) with random weights; nothing is downloaded.

Each setting runs in a fresh subprocess (``--in-process``, implied by ``--quick``, runs
them all in this one) that builds its model and items and warms up; then the driver times
``--repeats`` passes over all items of every setting in turns (round r: one pass of each
setting, the order rotated every round), so load from other work on the machine falls on
every setting alike (``--sequential``: one process at a time instead, for models too big
to hold four copies). items/s is from the fastest pass of each setting (load only ever
slows a pass down); the median and every pass time are in the JSON. Peak memory: on CUDA
``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (minus what is
allocated after the model is loaded); on CPU peak RSS (``resource.getrusage``) minus the RSS
after the model is loaded, with the kernel's peak-RSS mark reset at that point
(``/proc/self/clear_refs``) so the transient peak of building the model does not count.

On CPU torch runs on one thread unless ``--threads`` says otherwise (on a shared machine
intra-op threads spin-wait on each other and make passes up to 10x slower at random).

    python benchmarks/icl_scoring.py                       # CPU, tiny Llama, 300 items
    python benchmarks/icl_scoring.py --quick               # smoke run, seconds
    python benchmarks/icl_scoring.py --device cuda --model xglm-564m --items 2000   # bf16
    python benchmarks/icl_scoring.py --device cuda --model 7b --items 1000 --sequential
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from real_model import GEMMA3  # noqa: E402  (benchmarks/real_model.py, next to this script)

SETTINGS = ("naive", "xalign-no-reuse", "xalign", "lm-eval", "xalign-full-vocab", "xalign-bf16",
            "xalign-bf16-full-vocab")
LABELS = {
    "naive": "naive per-option, batch 1",
    "xalign-no-reuse": "xalign batched, no prefix reuse",
    "xalign": "xalign batched + prefix reuse",
    "lm-eval": "lm-eval HFLM.loglikelihood",
    "xalign-full-vocab": "xalign, LM head at every position",
    "xalign-bf16": "xalign, bf16 weights",
    "xalign-bf16-full-vocab": "xalign, bf16, head at every position",
}
REAL_MODEL_SETTINGS = ["xalign", "xalign-full-vocab", "xalign-bf16", "lm-eval"]
REAL_XCOPA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real" / "xcopa"

#: Model shapes (random weights). ``vocab_size`` None: the tokenizer's size.
PRESETS = {
    # like the synthetic world's base model (xalign.synthetic.base_model), a bit larger
    "tiny": ("llama", dict(vocab_size=None, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
                           tie_word_embeddings=True)),
    "tiny-quick": ("llama", dict(vocab_size=None, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
                                 tie_word_embeddings=True)),
    # facebook/xglm-564M's shape
    "xglm-564m": ("xglm", dict(vocab_size=256008, d_model=1024, num_layers=24, attention_heads=16, ffn_dim=4096,
                               max_position_embeddings=2048)),
    # meta-llama/Llama-2-7b-hf's shape
    "7b": ("llama", dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                         rms_norm_eps=1e-5)),
}

LM_EVAL_INSTALL = 'pip install -e ".[test]"   (or: pip install lm-eval==0.4.13 accelerate)'


# --- the task: XCOPA-shaped rows, xalign's XCOPA task, a locally trained tokenizer -------


def _pseudo_words(rng: random.Random, n: int) -> list[str]:
    onsets = "b c d f g h k l m n p r s t v w z br tr st pl kr sh ch gl".split()
    vowels = "a e i o u a e i o ai ou ea".split()
    codas = ["", "", "", "n", "r", "s", "t", "l", "m", "k"]
    words: list[str] = []
    seen = set()
    while len(words) < n:
        syllables = rng.choices((1, 2, 3), weights=(4, 5, 2))[0]
        word = "".join(rng.choice(onsets) + rng.choice(vowels) for _ in range(syllables)) + rng.choice(codas)
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def _rows(rng: random.Random, words: list[str], n: int) -> list[dict]:
    """XCOPA-like rows: premise 4-8 words, choices 3-7 (real XCOPA: ~6 and ~5 on average)."""
    weights = [1.0 / (rank + 1) for rank in range(len(words))]  # Zipf: a few very frequent words

    def sentence(lo: int, hi: int) -> str:
        text = " ".join(rng.choices(words, weights=weights, k=rng.randint(lo, hi)))
        return text[0].upper() + text[1:] + "."

    return [{"idx": i, "premise": sentence(4, 8), "choice1": sentence(3, 7), "choice2": sentence(3, 7),
             "question": rng.choice(("cause", "effect")), "label": rng.randint(0, 1)} for i in range(n)]


def prepare_real_workdir(work: Path, n_items: int, n_dev: int, model_dir: str, xcopa: Path) -> None:
    """Real English COPA rows (test: ``n_items``, dev: from train) and the model's tokenizer."""
    from transformers import AutoTokenizer

    files = {"test": xcopa / "en" / "test.jsonl", "dev": xcopa / "en" / "train.jsonl"}
    missing = [str(f) for f in files.values() if not f.is_file()]
    if missing:
        raise SystemExit(f"--xcopa {xcopa}: missing {', '.join(missing)} (English COPA next to XCOPA)")
    (work / "en").mkdir(parents=True, exist_ok=True)
    for split, n in (("test", n_items), ("dev", n_dev)):
        rows = files[split].read_text(encoding="utf-8").splitlines()[:n]
        (work / "en" / f"{split}.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(work / "tokenizer")


def prepare_workdir(work: Path, n_items: int, n_dev: int) -> None:
    """Data files and tokenizer (built once, read by every measurement)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(1234)
    words = _pseudo_words(rng, 3000)
    splits = {"dev": _rows(rng, words, n_dev), "test": _rows(rng, words, n_items)}
    (work / "en").mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        with open(work / "en" / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    texts = ["cause: effect: because so"] + [r[k] for rows in splits.values() for r in rows
                                             for k in ("premise", "choice1", "choice2")]
    # more text than the items alone, so that the vocabulary is not fitted to them exactly
    texts += [" ".join(rng.choices(words, k=12)) for _ in range(4 * len(texts))]
    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=4000, special_tokens=["<pad>", "<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    core.post_processor = processors.TemplateProcessing(  # adds <s> itself, as Llama's tokenizer
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", core.token_to_id("<s>"))])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>", pad_token="<pad>")
    tokenizer.save_pretrained(work / "tokenizer")


def load_items(work: Path, shots: int):
    from xalign.config.eval import TaskSourceConfig
    from xalign.eval.task_items import build_items

    source = TaskSourceConfig.model_validate({"dev": f"{work}/{{lang}}/dev.jsonl",
                                              "test": f"{work}/{{lang}}/test.jsonl"})
    return build_items("xcopa", "en", split="test", template="afp", shots=shots, protocol="same", seed=0,
                       sources={"xcopa": source})


def token_stats(tokenizer, items) -> dict:
    from xalign.eval.scoring import split_request

    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    prefix = len(enc(items[0].prefix)) if items[0].prefix else 0
    contexts, options, totals = [], [], []
    for item in items:
        contexts.append(len(enc(item.context)))
        for j, option in enumerate(item.options):
            context, continuation = split_request(item.prompt(j), option)
            n_context = len(enc(context))
            n_total = len(enc(context + continuation))
            options.append(n_total - n_context)
            totals.append(1 + n_total)
    return {"prefix_tokens": prefix, "context_tokens_mean": statistics.mean(contexts),
            "option_tokens_mean": statistics.mean(options), "request_tokens_mean": statistics.mean(totals),
            "options_per_item": statistics.mean(len(it.options) for it in items)}


# --- the model ---------------------------------------------------------------------------


def model_config(args, tokenizer):
    from transformers import AutoConfig

    if args.model_config:
        data = json.loads(Path(args.model_config).read_text(encoding="utf-8"))
        model_type = data.pop("model_type")
        for key in ("architectures", "transformers_version", "torch_dtype", "dtype", "_name_or_path"):
            data.pop(key, None)
        config = AutoConfig.for_model(model_type, **data)
    else:
        model_type, shape = PRESETS[args.model]
        shape = dict(shape)
        if shape["vocab_size"] is None:
            shape["vocab_size"] = len(tokenizer)
        config = AutoConfig.for_model(model_type, **shape)
    if config.vocab_size < len(tokenizer):
        raise SystemExit(f"the model's vocab_size {config.vocab_size} is below the tokenizer's {len(tokenizer)}")
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(config, name, getattr(tokenizer, name))
    return config


def build_model(args, tokenizer, dtype_name: str | None = None):
    import torch
    from transformers import AutoModelForCausalLM

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name or args.dtype]
    if args.model_path:  # a real model (--model gemma3-270m): its own weights
        return AutoModelForCausalLM.from_pretrained(args.model_path, dtype=dtype).to(args.device).eval()
    config = model_config(args, tokenizer)
    torch.manual_seed(0)  # the same weights in every measurement
    with torch.device(args.device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


# --- one measurement ----------------------------------------------------------------------


def _rss_mb() -> float:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _peak_rss_mb() -> float:
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0); getrusage's ru_maxrss follows it."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def naive_scores(model, tokenizer, items):
    """The released code's way: one plain forward per (item, option), prefix included."""
    import torch

    from xalign.eval.scoring import leading_tokens, split_request

    lead = leading_tokens(tokenizer)  # the same tokenisation as xalign's and lm-eval's
    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for item in items:
            lls = []
            for j, option in enumerate(item.options):
                context, continuation = split_request(item.prompt(j), option)
                context_ids = lead + tokenizer(context, add_special_tokens=False)["input_ids"]
                whole = lead + tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
                ids = context_ids + whole[len(context_ids):]
                logits = model(torch.tensor([ids], device=device)).logits[0, len(context_ids) - 1: -1]
                target = torch.tensor(whole[len(context_ids):], device=device)
                lls.append(float(logits.float().log_softmax(-1).gather(-1, target[:, None]).sum()))
            out.append(lls)
    return out


class Measurement:
    """One setting at one number of shots: its own tokenizer, items and model (the same
    weights in every measurement), warmed up; ``timed_pass`` scores every item once."""

    def __init__(self, args, setting: str, shots: int, work: Path, *, memory_per_pass: bool = False):
        import torch
        from transformers import AutoTokenizer

        from xalign.eval.scoring import score_items

        if args.threads:
            torch.set_num_threads(args.threads)
        self.torch, self.setting, self.shots = torch, setting, shots
        self.cuda = args.device == "cuda"
        self.memory_per_pass = memory_per_pass  # in-process: the mark is reset before each pass
        self.tokenizer = tokenizer = AutoTokenizer.from_pretrained(work / "tokenizer")
        self.items = load_items(work, shots)
        self.model = model = build_model(args, tokenizer, "bf16" if setting.startswith("xalign-bf16") else None)
        if setting == "lm-eval":
            import logging

            for name in ("lm_eval", "lm-eval"):
                logging.getLogger(name).setLevel(logging.ERROR)
            from lm_eval.api.instance import Instance
            from lm_eval.models.huggingface import HFLM

            hflm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=args.batch_size, device=args.device)

            def run(batch):
                requests = [Instance("loglikelihood", {}, (it.prompt(j), o), j)
                            for it in batch for j, o in enumerate(it.options)]
                answers = iter(hflm.loglikelihood(requests, disable_tqdm=True))
                return [[next(answers)[0] for _ in it.options] for it in batch]
        elif setting == "naive":
            def run(batch):
                return naive_scores(model, tokenizer, batch)
        else:
            reuse = setting != "xalign-no-reuse"
            full_vocab = setting.endswith("full-vocab")

            def run(batch):
                scores = score_items(model, tokenizer, batch, batch_size=args.batch_size, reuse_prefix=reuse,
                                     full_vocab=full_vocab)
                return [[s.logprob for s in item_scores] for item_scores in scores]

        self.run = run
        self.times: list[float] = []
        self.cpu_times: list[float] = []
        self.peak = 0.0
        self.lls = None
        self._start_memory()
        run(self.items[: max(1, min(len(self.items), args.warmup))])  # warm-up: allocator, kernels, caches
        self._end_memory()

    def _start_memory(self) -> None:
        torch = self.torch
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated() / 2**20
            self.memory_method = "torch.cuda.max_memory_allocated - allocated after model load"
        else:
            reset = _reset_peak_rss()
            self.base = _rss_mb()
            self.memory_method = ("peak RSS (getrusage; peak mark reset after model load) - RSS after model load"
                                  if reset else "peak RSS (getrusage; includes building the model) - RSS after load")
            if self.memory_per_pass:
                self.memory_method += " (in-process: per pass, approximate)"

    def _end_memory(self) -> None:
        peak = self.torch.cuda.max_memory_allocated() / 2**20 if self.cuda else _peak_rss_mb()
        # RSS can end below the mark taken after loading (memory freed): nothing above it is 0
        self.peak = max(self.peak, peak - self.base, 0.0)

    def timed_pass(self) -> float:
        torch = self.torch
        if self.memory_per_pass:
            self._start_memory()
        if self.cuda:
            torch.cuda.synchronize()
        start, cpu = time.perf_counter(), time.process_time()
        self.lls = self.run(self.items)
        if self.cuda:
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - start)
        self.cpu_times.append(time.process_time() - cpu)
        self._end_memory()
        return self.times[-1]

    def result(self) -> dict:
        items, lls, times = self.items, self.lls, self.times
        preds = [max(range(len(x)), key=x.__getitem__) for x in lls]  # first maximum, as numpy.argmax
        return {
            "setting": self.setting, "shots": self.shots, "items": len(items),
            "requests": sum(len(it.options) for it in items),
            "times_s": times, "cpu_times_s": self.cpu_times, "seconds": min(times),
            "items_per_s": len(items) / min(times), "items_per_s_median": len(items) / statistics.median(times),
            "spread": max(times) / min(times),
            "peak_memory_mb": self.peak, "memory_after_load_mb": self.base, "memory_method": self.memory_method,
            "accuracy": sum(p == it.gold for p, it in zip(preds, items)) / len(items),
            "preds": preds, "logprobs": lls,
            "model_params": sum(p.numel() for p in self.model.parameters()),
            "model_bytes": sum(p.numel() * p.element_size() for p in self.model.parameters()),
            "model_type": self.model.config.model_type, "torch_threads": self.torch.get_num_threads(),
            "tokens": token_stats(self.tokenizer, items),
        }


MARK = "@@icl-scoring "


def worker(args) -> int:
    """A measurement in its own process, driven over stdin: "pass" times one pass, "done"
    writes the result. Replies are stdout lines starting with MARK."""
    m = Measurement(args, args.worker, int(args.worker_shots), Path(args.worker_dir))
    print(MARK + "ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "pass":
            print(MARK + json.dumps(m.timed_pass()), flush=True)
        elif line.strip() == "done":
            Path(args.worker_out).write_text(json.dumps(m.result()), encoding="utf-8")
            print(MARK + "done", flush=True)
            return 0
    return 1


class Worker:
    """The driver's end of a measurement subprocess."""

    def __init__(self, args, setting: str, shots: int, work: Path):
        self.name = f"{setting} at {shots} shots"
        self.out = work / f"result-{setting}-{shots}.json"
        self.log = open(work / f"log-{setting}-{shots}.txt", "w+", encoding="utf-8")
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", setting, "--worker-shots", str(shots),
               "--worker-dir", str(work), "--worker-out", str(self.out)] + args.passthrough
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     text=True, bufsize=1)

    def _reply(self) -> str:
        for line in self.proc.stdout:
            if line.startswith(MARK):
                return line[len(MARK):].strip()
        self.proc.wait()
        self.log.seek(0)
        raise SystemExit(f"measurement {self.name} failed (exit {self.proc.returncode}):\n{self.log.read()[-4000:]}")

    def ready(self) -> None:
        assert self._reply() == "ready"

    def timed_pass(self) -> float:
        self.proc.stdin.write("pass\n")
        return float(self._reply())

    def result(self) -> dict:
        self.proc.stdin.write("done\n")
        assert self._reply() == "done"
        self.proc.stdin.close()
        self.proc.wait()
        self.log.close()
        return json.loads(self.out.read_text(encoding="utf-8"))


def measure_all(args, settings: list[str], shots: int, work: Path) -> dict[str, dict]:
    """Every setting at ``shots``: built, then timed in turns (pass r of every setting, in
    an order rotated each round), so that load from other work on the machine falls on all
    of them alike. Each in its own process unless ``--in-process`` (or ``--sequential``:
    one process at a time, all passes of one setting before the next)."""
    if args.in_process:
        runners = {}
        for s in settings:
            print(f"[building {s} at {shots} shots]", file=sys.stderr, flush=True)
            runners[s] = Measurement(args, s, shots, work, memory_per_pass=True)
    elif args.sequential:
        out = {}
        for s in settings:
            print(f"[{s} at {shots} shots]", file=sys.stderr, flush=True)
            w = Worker(args, s, shots, work)
            w.ready()
            for _ in range(args.repeats):
                w.timed_pass()
            out[s] = w.result()
        return out
    else:
        print(f"[building {', '.join(settings)} at {shots} shots, one process each]", file=sys.stderr, flush=True)
        runners = {}
        for s in settings:  # one build at a time: building a model briefly takes more memory
            runners[s] = Worker(args, s, shots, work)
            runners[s].ready()
    for r in range(args.repeats):
        print(f"[{shots} shots: timed round {r + 1}/{args.repeats}]", file=sys.stderr, flush=True)
        for s in settings[r % len(settings):] + settings[: r % len(settings)]:
            runners[s].timed_pass()
    return {s: runners[s].result() for s in settings}


# --- the driver ---------------------------------------------------------------------------


def machine() -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "platform": platform.platform()}
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info["cpu"] = cpu
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    for name in ("transformers", "lm_eval"):
        try:
            from importlib.metadata import version

            info[name] = version(name.replace("_", "-"))
        except Exception:  # not installed
            info[name] = None
    return info


def lm_eval_missing() -> str | None:
    missing = [m for m in ("lm_eval", "accelerate") if importlib.util.find_spec(m) is None]
    return ", ".join(missing) if missing else None


def _rate(value: float) -> str:
    """Three significant digits or more: 1234, 123.4, 12.34, 0.123."""
    return f"{value:.{max(0, 2 - math.floor(math.log10(value))) if value > 0 else 1}f}"


def _ratio_line(what: str, num: dict | None, den: dict | None, versus: str, target: float | None = None) -> str | None:
    if not num or not den:
        return None
    ratio = num["items_per_s"] / den["items_per_s"]
    line = f"{what} at {num['shots']} shots: {ratio:.2f}x items/s of {versus}"
    if target is not None:
        line += f"  (target >= {target:g}x: {'met' if ratio >= target else 'NOT met'})"
    return line


def report(results: dict, info: dict, args, lm_eval_note: str | None) -> dict:
    first = next(iter(results.values()))
    size = first["model_bytes"] / 2**20
    print(f"machine: {info.get('gpu') or info['cpu']} ({info['cpu_count']} CPU cores, torch threads "
          f"{first['torch_threads']}); device {args.device}; torch {info['torch']}, transformers "
          f"{info['transformers']}, lm-eval {info['lm_eval'] or 'not installed'}")
    name = args.model_config or args.model
    weights = f"weights from {args.model_path}" if args.model_path else "random weights"
    print(f"model: {name} ({first['model_type']}, {weights}) {first['model_params'] / 1e6:.1f}M params, "
          f"{size:.0f} MiB {args.dtype}; batch size {args.batch_size}; {first['items']} items, "
          f"items/s of the fastest of {args.repeats} timed passes")
    for shots in args.shots:
        tokens = next(r for (s, k), r in results.items() if k == shots)["tokens"]
        print(f"  {shots}-shot tokens: prefix {tokens['prefix_tokens']}, context {tokens['context_tokens_mean']:.1f}, "
              f"option {tokens['option_tokens_mean']:.1f} (mean), request {tokens['request_tokens_mean']:.1f}, "
              f"{tokens['options_per_item']:g} options per item")
    print()
    cpu = args.device == "cpu"
    header = (f"{'shots':>5}  {'setting':<33} {'items/s':>9} {'vs naive':>9}"
              + (f" {'items/CPU-s':>11} {'vs naive':>9}" if cpu else "") + f" {'peak MiB':>9} {'acc':>6}")
    print(header)
    print("-" * len(header))
    summary = {"settings": [], "ratios": {}}
    for shots in args.shots:
        naive = results.get(("naive", shots))
        for setting in SETTINGS:
            r = results.get((setting, shots))
            if r is None:
                continue
            r["items_per_cpu_s"] = r["items"] / min(r["cpu_times_s"])  # process CPU time, all threads
            vs = f"{r['items_per_s'] / naive['items_per_s']:.2f}x" if naive else "-"
            line = f"{shots:>5}  {LABELS[setting]:<33} {_rate(r['items_per_s']):>9} {vs:>9}"
            if cpu:
                vs_cpu = f"{r['items_per_cpu_s'] / naive['items_per_cpu_s']:.2f}x" if naive else "-"
                line += f" {_rate(r['items_per_cpu_s']):>11} {vs_cpu:>9}"
            print(line + f" {r['peak_memory_mb']:>9.1f} {100 * r['accuracy']:>5.1f}%")
            summary["settings"].append({k: v for k, v in r.items() if k not in ("preds", "logprobs")})
    print()
    lines = []
    for shots in args.shots:
        get = lambda s: results.get((s, shots))  # noqa: E731
        lines += [
            _ratio_line("prefix reuse" if shots else "xalign (no prefix to reuse)", get("xalign"), get("naive"),
                        "naive per-option scoring", 3.0 if shots == 5 else None),
            _ratio_line("batching alone (no prefix reuse)", get("xalign-no-reuse"), get("naive"),
                        "naive per-option scoring"),
            _ratio_line("prefix reuse on top of batching", get("xalign"), get("xalign-no-reuse"),
                        "xalign batched without prefix reuse") if shots else None,
            _ratio_line("xalign vs lm-evaluation-harness", get("xalign"), get("lm-eval"),
                        "lm-eval HFLM.loglikelihood", 1.0),
            _ratio_line("LM head at the read positions", get("xalign"), get("xalign-full-vocab"),
                        "the LM head at every position", 3.0 if shots == 0 else None),
            _ratio_line("bf16 weights", get("xalign-bf16"), get("xalign"), "fp32 weights"),
            _ratio_line("LM head at the read positions, bf16", get("xalign-bf16"), get("xalign-bf16-full-vocab"),
                        "the LM head at every position, bf16"),
        ]
        for key, (a, b) in {"xalign_over_naive": ("xalign", "naive"),
                            "no_reuse_over_naive": ("xalign-no-reuse", "naive"),
                            "xalign_over_no_reuse": ("xalign", "xalign-no-reuse"),
                            "xalign_over_lm_eval": ("xalign", "lm-eval"),
                            "xalign_over_full_vocab": ("xalign", "xalign-full-vocab"),
                            "bf16_over_fp32": ("xalign-bf16", "xalign"),
                            "bf16_over_bf16_full_vocab": ("xalign-bf16", "xalign-bf16-full-vocab")}.items():
            if get(a) and get(b):
                summary["ratios"][f"{key}@{shots}"] = get(a)["items_per_s"] / get(b)["items_per_s"]
    for line in lines:
        if line:
            print(line)
    if lm_eval_note:
        print(lm_eval_note)
    # the same scores from every setting: accuracy, predictions, largest log-likelihood gap
    summary["agreement"] = {}
    pairs = [("xalign", other) for other in ("lm-eval", "naive", "xalign-no-reuse", "xalign-full-vocab", "xalign-bf16")]
    pairs.append(("xalign-bf16", "xalign-bf16-full-vocab"))
    for shots in args.shots:
        for mine, other in pairs:
            ours, theirs = results.get((mine, shots)), results.get((other, shots))
            if not ours or not theirs:
                continue
            same = sum(a == b for a, b in zip(ours["preds"], theirs["preds"]))
            gap = max(abs(x - y) for a, b in zip(ours["logprobs"], theirs["logprobs"]) for x, y in zip(a, b))
            key = f"{other}@{shots}" if mine == "xalign" else f"{other}_vs_{mine}@{shots}"
            summary["agreement"][key] = {
                f"accuracy_{mine}": ours["accuracy"], f"accuracy_{other}": theirs["accuracy"],
                "same_predictions": same, "items": len(ours["preds"]), "max_abs_logprob_diff": gap}
            if other in ("lm-eval", "xalign-full-vocab", "xalign-bf16", "xalign-bf16-full-vocab") or gap > 1e-3:
                print(f"accuracy at {shots} shots: {mine} {100 * ours['accuracy']:.2f}%, {other} "
                      f"{100 * theirs['accuracy']:.2f}% (same prediction on {same}/{len(ours['preds'])} items, "
                      f"max |log-likelihood difference| {gap:.1e})")
    noisy = [f"{r['setting']}@{r['shots']}" for r in results.values() if r["spread"] > 1.5]
    if noisy:
        print(f"noisy timings (slowest pass > 1.5x the fastest: {', '.join(noisy)}): the machine is busy")
    print(f"peak memory: {first['memory_method']}")
    if args.device == "cpu":
        print("items/s: wall clock of the fastest pass; items/CPU-s: the process's CPU time (all threads) of its "
              "least costly pass, steadier than wall clock on a busy machine at --threads 1 (with more threads it "
              "counts their spin-waiting). CPU numbers depend on the machine's load: compare ratios from one run.")
    return summary


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=[*PRESETS, GEMMA3], default="tiny",
                   help="preset model shape, random weights (default: tiny; tiny-quick is --quick's), or the real "
                        f"{GEMMA3} (benchmarks/real_model.py)")
    p.add_argument("--model-path", help=f"with --model {GEMMA3}: a converted HF folder or a .gguf file "
                   "(default: the model package's GGUF, converted once)")
    p.add_argument("--xcopa", type=Path, default=REAL_XCOPA,
                   help="real data for a real model: the XCOPA folder with en/test.jsonl and en/train.jsonl")
    p.add_argument("--model-config", help="a transformers config.json instead of --model (random weights)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available, else cpu")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default=None, help="default: bf16 on cuda, fp32 on cpu")
    p.add_argument("--items", type=int, default=None, help="test items (default 300; --quick 12)")
    p.add_argument("--shots", type=int, nargs="+", default=[0, 5], help="numbers of demonstrations (default 0 5)")
    p.add_argument("--batch-size", type=int, default=16, help="batch size of xalign and lm-eval (default 16)")
    p.add_argument("--repeats", type=int, default=None, help="timed passes over the items, the fastest counts "
                   "(default 5; --quick 1)")
    p.add_argument("--warmup", type=int, default=None, help="items of the warm-up pass (default 2 x batch size)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads; 0: torch's default (default: 1 on cpu, torch's on cuda)")
    p.add_argument("--settings", nargs="+", choices=SETTINGS, default=None,
                   help="default: naive xalign-no-reuse xalign lm-eval (random models), "
                        f"{' '.join(REAL_MODEL_SETTINGS)} ({GEMMA3})")
    p.add_argument("--in-process", action="store_true",
                   help="run every setting in this process (faster; peak memory less exact)")
    p.add_argument("--sequential", action="store_true",
                   help="one measurement process at a time, all its passes in a row (less memory: one model "
                        "loaded at a time; more exposed to changing load)")
    p.add_argument("--quick", action="store_true", help="tiny sizes for a smoke run in seconds (implies --in-process)")
    p.add_argument("--json", help="write every number to this JSON file")
    for hidden in ("--worker", "--worker-shots", "--worker-dir", "--worker-out"):
        p.add_argument(hidden, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.dtype is None:
        args.dtype = "bf16" if args.device == "cuda" else "fp32"
    if args.threads is None:
        # one thread on CPU: on a shared or busy machine intra-op threads spin-wait on each
        # other and a pass can take 10x longer; pass --threads 0 for torch's default
        args.threads = 1 if args.device == "cpu" else 0
    if args.settings is None:
        args.settings = list(REAL_MODEL_SETTINGS if args.model == GEMMA3 else SETTINGS[:4])
    if args.model == GEMMA3 and not args.worker:
        from real_model import gemma3_folder

        args.model_path = str(gemma3_folder(args.model_path))
    elif args.model_path and args.model != GEMMA3:
        p.error(f"--model-path goes with --model {GEMMA3}")
    if args.quick:
        args.in_process = True
        if args.model == "tiny" and not args.model_config:
            args.model = "tiny-quick"
    if args.items is None:
        args.items = 12 if args.quick else 300
    if args.repeats is None:
        args.repeats = 1 if args.quick else 5
    if args.warmup is None:
        args.warmup = 2 * args.batch_size
    if args.items < 1 or args.repeats < 1 or args.batch_size < 1:
        p.error("--items, --repeats and --batch-size must be >= 1")
    # what a measurement subprocess needs to rebuild the same model
    args.passthrough = ["--model", args.model, "--device", args.device, "--dtype", args.dtype,
                        "--batch-size", str(args.batch_size), "--repeats", str(args.repeats),
                        "--warmup", str(args.warmup), "--threads", str(args.threads), "--items", str(args.items)]
    if args.model_config:
        args.passthrough += ["--model-config", os.path.abspath(args.model_config)]
    if args.model_path:
        args.passthrough += ["--model-path", args.model_path]
    return p, args


def main(argv=None) -> int:
    p, args = parse_args(argv)
    if args.worker:  # one measurement in a fresh process
        return worker(args)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            p.error("--device cuda: no CUDA device")
    settings = list(args.settings)
    lm_eval_note = None
    missing = lm_eval_missing()
    if "lm-eval" in settings and missing:
        settings.remove("lm-eval")
        lm_eval_note = (f"lm-evaluation-harness comparison skipped: {missing} not installed; install with "
                        f"{LM_EVAL_INSTALL}")
    info = machine()
    results: dict[tuple[str, int], dict] = {}
    with tempfile.TemporaryDirectory(prefix="icl-scoring-") as tmp:
        work = Path(tmp)
        if args.model_path:
            prepare_real_workdir(work, args.items, max(20, 2 * max(args.shots)), args.model_path, args.xcopa)
        else:
            prepare_workdir(work, args.items, n_dev=max(20, 2 * max(args.shots)))
        for shots in args.shots:
            for setting, result in measure_all(args, settings, shots, work).items():
                results[(setting, shots)] = result
            gc.collect()
    summary = report(results, info, args, lm_eval_note)
    if args.json:
        out = {"machine": info, "args": {k: v for k, v in vars(args).items() if not k.startswith("worker")
                                         and k != "passthrough"},
               "isolation": "in-process" if args.in_process else "one subprocess per setting",
               "timing": "one pass after another" if args.sequential and not args.in_process
               else "passes of all settings in turns",
               "lm_eval_skipped": lm_eval_note, **summary}
        ok = all(math.isfinite(s["items_per_s"]) for s in summary["settings"])
        out["all_finite"] = ok
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
