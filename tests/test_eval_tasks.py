"""Evaluation tasks: registry, templates (both families), data sources, k-shot protocols and
bad input. Real-data tests use ../shared/data/real and skip when it is absent; the lm-eval
comparison reads the installed harness's task files and skips when it is not installed."""

from __future__ import annotations

import ast
import csv
import importlib.util
import json
import random
import re
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

from xalign.config import load_run
from xalign.config.eval import EvalConfig, TaskSourceConfig
from xalign.eval.items import EvalItem
from xalign.eval.task_items import build_eval_items, build_items
from xalign.eval.task_rows import load_rows, task_languages
from xalign.tasks import FAMILIES, TaskError, Template, get_task, task_names
from xalign.tasks.base import Task
from xalign.tasks.pawsx import AFP_WORDS as PAWSX_AFP, LM_EVAL_WORDS as PAWSX_LM
from xalign.tasks.xcopa import AFP_WORDS as XCOPA_AFP, LM_EVAL_WORDS as XCOPA_LM
from xalign.tasks.xnli import AFP_WORDS as XNLI_AFP, LM_EVAL_WORDS as XNLI_LM

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real"
REAL_TASKS = ("pawsx", "xcopa", "xnli", "xstorycloze", "xwinograd")
#: Languages that have template words in BOTH families (so protocol "same" works in each).
LANGS = {"pawsx": ("en", "zh", "de"), "xcopa": ("en", "zh"), "xnli": ("en", "zh", "de"),
         "xstorycloze": ("en", "zh"), "xwinograd": ("en", "ja")}


# ---------------------------------------------------------------- made-up data in the real formats
SYLLABLES = ("ka", "lo", "mi", "pu", "re", "sa", "ti", "vo", "ne", "zu", "fa", "gi", "do", "be")


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(2))


def _sentence(rng: random.Random, n: int = 3) -> str:
    words = [_word(rng) for _ in range(n)]
    return " ".join([words[0].capitalize()] + words[1:]) + "."


def make_rows(task: str, n: int, seed: int) -> list[dict]:
    """``n`` rows of ``task`` in its real format. Items come in groups (one per label) that
    share everything a broken template could keep on its own (the options, PAWS-X's
    sentence2, XNLI's hypothesis, XCOPA's question, XWinograd's
    text after the blank) and differ in gold label, so a model can
    only pick the gold option by reading the text that tells the items apart."""
    rng = random.Random(seed)
    rows = []
    size = 3 if task == "xnli" else 2
    while len(rows) < n:
        shared = (_sentence(rng), _sentence(rng), rng.choice(["cause", "effect"]))
        names = (_word(rng).capitalize(), _word(rng).capitalize())
        for j in range(size):
            k = len(rows)
            if task == "pawsx":
                rows.append({"id": str(k), "sentence1": _sentence(rng), "sentence2": shared[0], "label": str(j)})
            elif task == "xnli":
                rows.append({"premise": _sentence(rng), "hypothesis": shared[0], "label": j})
            elif task == "xcopa":
                rows.append({"idx": k, "premise": _sentence(rng), "choice1": shared[0], "choice2": shared[1],
                             "question": shared[2], "label": j})
            elif task == "xstorycloze":
                rows.append({"story_id": f"s{k}", **{f"input_sentence_{m}": _sentence(rng) for m in range(1, 5)},
                             "sentence_quiz1": shared[0], "sentence_quiz2": shared[1], "answer_right_ending": j + 1})
            elif task == "xwinograd":
                rows.append({"sentence": f"{_word(rng).capitalize()} {_word(rng)} _ {shared[0].lower()}",
                             "option1": names[0], "option2": names[1], "answer": str(j + 1)})
    return rows[:n]


def write_rows(path: Path, rows: list[dict], fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "tsv":
        cols = list(rows[0]) if rows else ["id", "sentence1", "sentence2", "label"]
        lines = ["\t".join(cols)] + ["\t".join(str(r[c]) for c in cols) for r in rows]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    else:
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


FMT = {"pawsx": "tsv", "xcopa": "jsonl", "xnli": "jsonl", "xstorycloze": "jsonl", "xwinograd": "jsonl"}


@pytest.fixture(scope="module")
def made_up(tmp_path_factory) -> dict:
    """eval.sources for local made-up files of every real task: dev 6 items, test 8 items,
    in every language of LANGS (and en)."""
    root = tmp_path_factory.mktemp("tasks")
    sources = {}
    for t, langs in LANGS.items():
        ext = FMT[t]
        for li, lang in enumerate(sorted(set(langs) | {"en"})):
            for split, n in (("dev", 6), ("test", 8)):
                seed = zlib.crc32(f"{t}/{lang}/{split}".encode())
                write_rows(root / t / lang / f"{split}.{ext}", make_rows(t, n, seed=seed), ext)
        sources[t] = TaskSourceConfig(dev=str(root / t / "{lang}" / f"dev.{ext}"),
                                      test=str(root / t / "{lang}" / f"test.{ext}"))
    return {"root": root, "sources": sources}


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_world_overrides) -> Path:
    """A tiny synthetic world (data only, ~3 s): 20 dev and 40 test items per task and language."""
    from xalign.config import from_overrides
    from xalign.config.world import WorldConfig
    from xalign.synthetic import build_world

    cfg = from_overrides(WorldConfig, tiny_world_overrides)
    return build_world(cfg, tmp_path_factory.mktemp("world") / "w").path


# ---------------------------------------------------------------- registry and config
def test_registry_lists_the_tasks_and_misses_teach():
    assert task_names() == ("facts", "pawsx", "xcopa", "xnli", "xstorycloze", "xwinograd")
    with pytest.raises(TaskError) as info:
        get_task("xcpa")
    assert str(info.value) == ("Unknown task 'xcpa'. Did you mean 'xcopa'? "
                               "Available: facts, pawsx, xcopa, xnli, xstorycloze, xwinograd")
    with pytest.raises(TaskError, match="Did you mean 'pawsx'"):
        get_task("paws-x")


def test_config_checks_task_names_without_importing_torch():
    code = ("import sys\nfrom xalign.config.schema import RunConfig\n"
            "try:\n    RunConfig(eval={'tasks': ['facts', 'xcpa']})\nexcept ValueError as e:\n    print(e)\n"
            "print('heavy:', sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert "Unknown task 'xcpa'. Did you mean 'xcopa'? Available: facts, pawsx" in out
    assert "heavy: []" in out


def test_eval_config_defaults_and_sources_validation(tmp_path):
    cfg = EvalConfig()
    assert (cfg.tasks, cfg.template, cfg.split, cfg.protocol, cfg.sources) == (["facts", "pawsx", "xcopa"], "afp",
                                                                            "test", "cross", {})
    with pytest.raises(ValueError, match="Unknown task 'xcopaa'"):
        EvalConfig(sources={"xcopaa": {"test": "/x/{lang}.jsonl"}})
    with pytest.raises(ValueError, match="exist only in the synthetic world"):
        EvalConfig(sources={"facts": {"test": "/x/{lang}.jsonl"}})
    with pytest.raises(ValueError, match="either `hub` or local files"):
        TaskSourceConfig(hub="a/b", test="/x/{lang}.jsonl")
    with pytest.raises(ValueError, match="path does not exist"):
        TaskSourceConfig(test=str(tmp_path / "nope.jsonl"))


def test_unknown_language_says_which_exist(made_up):
    with pytest.raises(TaskError) as info:
        build_items("pawsx", "dee", sources=made_up["sources"], protocol="same")
    assert "Unknown language 'dee'. Did you mean 'de'? Available: de, en, es, fr, ja, ko, zh" in str(info.value)
    with pytest.raises(TaskError, match="Did you mean 'ja'"):
        build_items("xwinograd", "jp", protocol="same")
    assert task_languages("xwinograd") == ("en", "fr", "ja", "pt", "ru", "zh")


# ---------------------------------------------------------------- templates: options differ, gold is the true one
def _answer_marker(task: str, family: str, words: dict, row: dict, gold: int):
    """A test of the gold option computed from the raw row and the word table, independently
    of the template code: PAWS-X label 1 -> the "yes" word, XCOPA -> the gold choice, ..."""
    if task == "pawsx":
        word = words["yes" if gold == 1 else "no"]
        if family == "afp":
            return lambda o: o.startswith(f" {word}{words['comma']}")
        return lambda o: f"? {word}, " in o
    if task == "xnli":
        if family == "afp":
            word = words[("entailment", "neutral", "contradiction")[gold]]
            return lambda o: o == f" {word}"
        word = words[("yes", "also", "no")[gold]]
        return lambda o: f"? {word}, " in o
    if task == "xcopa":
        choice = row[f"choice{gold + 1}"]
        return lambda o: o.endswith(" " + choice[:1].lower() + choice[1:])
    if task == "xstorycloze":
        return lambda o: o == " " + row[f"sentence_quiz{gold + 1}"]
    if task == "xwinograd":
        name = row[f"option{gold + 1}"]
        part1 = row["sentence"].split("_")[0]
        return lambda o: o.startswith(part1 + name)
    raise AssertionError(task)


WORD_TABLES = {("pawsx", "afp"): PAWSX_AFP, ("pawsx", "lm_eval"): PAWSX_LM, ("xnli", "afp"): XNLI_AFP,
               ("xnli", "lm_eval"): XNLI_LM, ("xcopa", "afp"): XCOPA_AFP, ("xcopa", "lm_eval"): XCOPA_LM}
CASES = [(t, f, lang) for t in REAL_TASKS for f in FAMILIES for lang in LANGS[t]]


@pytest.mark.parametrize("task,family,lang", CASES, ids=[f"{t}-{f}-{lang}" for t, f, lang in CASES])
def test_options_differ_and_gold_is_the_true_statement(made_up, task, family, lang):
    items = build_items(task, lang, split="test", template=family, protocol="same",
                        sources=made_up["sources"])
    rows = load_rows(get_task(task), lang, "test", sources=made_up["sources"])
    assert len(items) == len(rows) == 8
    words = WORD_TABLES.get((task, family), {}).get(lang, {})
    partial = (task, family) == ("xwinograd", "lm_eval")  # lm-eval's multiple-input mode
    for item, row in zip(items, rows):
        assert isinstance(item, EvalItem) and item.prefix == ""
        assert bool(item.contexts) == partial
        # what tells the answers apart: the options, or (partial) the options' own contexts
        texts = [item.context_of(j) + o for j, o in enumerate(item.options)] if partial else list(item.options)
        assert len(set(texts)) == len(texts) == get_task(task).n_options
        if partial:  # one continuation, scored after each option's own context
            assert len(set(item.options)) == 1 and len(set(item.contexts)) == len(item.contexts)
        is_gold = _answer_marker(task, family, words, row, item.gold)
        assert [is_gold(t) for t in texts] == [j == item.gold for j in range(len(item.options))], item
    assert {i.gold for i in items} == set(range(get_task(task).n_options))  # both/all labels occur


def _tokens(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", text)


#: One language per (task, family) for the model check (the words change with the language,
#: the rendering code does not; the cases above cover every language of LANGS).
LM_CASES = [("pawsx", "afp", "zh"), ("pawsx", "lm_eval", "de"), ("xcopa", "afp", "zh"), ("xcopa", "lm_eval", "en"),
            ("xnli", "afp", "de"), ("xnli", "lm_eval", "zh"), ("xstorycloze", "afp", "en"),
            ("xstorycloze", "lm_eval", "zh"), ("xwinograd", "afp", "ja"), ("xwinograd", "lm_eval", "en")]


def test_a_model_that_knows_the_answers_picks_the_gold_option(made_up, world):
    """A 2-layer Llama trained for a few seconds on the GOLD renderings only (it "knows the
    answers") must score the gold option highest, with the option's log-likelihood summed
    over the option's tokens only. Items come in pairs sharing their options with opposite
    labels, so it must read the context: a template that left the answer out of the option,
    or the deciding text out of what is scored, would sit at chance."""
    from transformers import LlamaConfig, LlamaForCausalLM

    groups = {key: build_items(key[0], key[2], template=key[1], protocol="same", sources=made_up["sources"])
              for key in LM_CASES}
    groups[("facts", "afp", "qac")] = build_items("facts", "qac", protocol="same", world_dir=world, max_items=8)
    vocab = {"<bos>": 0, "<pad>": 1}
    for items in groups.values():
        for item in items:
            for text in (item.prefix, item.context, *item.contexts, *item.options):
                for tok in _tokens(text):
                    vocab.setdefault(tok, len(vocab))

    def encode(context: str, option: str) -> tuple[list[int], int]:
        ctx = [0] + [vocab[t] for t in _tokens(context)]
        return ctx + [vocab[t] for t in _tokens(option)], len(ctx)

    def batch(seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(map(len, seqs))
        ids = torch.tensor([s + [1] * (width - len(s)) for s in seqs])
        return ids, (ids != 1).long()

    train = sorted({tuple(encode(i.prompt(i.gold), i.options[i.gold])[0])
                    for items in groups.values() for i in items})
    ids, mask = batch([list(t) for t in train])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is ~30x faster than two on a busy 2-core machine
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = LlamaForCausalLM(LlamaConfig(
                vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=ids.shape[1],
                bos_token_id=0, pad_token_id=1, eos_token_id=1))
            opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
            for _ in range(120):
                loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
                opt.zero_grad()
                loss.backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    assert loss.item() < 0.5, f"the model did not learn the gold renderings (loss {loss.item():.2f})"
    model.eval()
    for key, items in groups.items():
        requests = [(n, j, *encode(i.prompt(j), o))
                    for n, i in enumerate(items) for j, o in enumerate(i.options)]
        ids, mask = batch([r[2] for r in requests])
        with torch.no_grad():
            logp = model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)
        scores = {}
        for row, (n, j, seq, n_ctx) in enumerate(requests):
            # token t of the option is predicted at position t - 1
            scores[(n, j)] = sum(logp[row, t - 1, seq[t]].item() for t in range(n_ctx, len(seq)))
        right = sum(max(range(len(i.options)), key=lambda j: scores[(n, j)]) == i.gold for n, i in enumerate(items))
        assert right >= len(items) - 1, f"{key}: {right}/{len(items)} right"


# ---------------------------------------------------------------- lm-eval 0.4.13: the exact strings
def _lm_eval_tasks_dir():
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or spec.origin is None:
        pytest.skip("lm-eval is not installed")
    return Path(spec.origin).parent / "tasks"


def _lm_yaml(path: Path) -> dict:
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
    cfg = yaml.load(path.read_text(encoding="utf-8"), Loader)
    if "include" in cfg:
        base = _lm_yaml(path.parent / cfg.pop("include"))
        base.update(cfg)
        cfg = base
    return cfg


def _lm_utils(path: Path):
    spec = importlib.util.spec_from_file_location(f"lm_utils_{path.parent.name.replace('-', '_')}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Docs(list):
    """Just enough of a datasets.Dataset for lm-eval's process_docs (filter, map)."""

    def filter(self, fn):
        return _Docs(d for d in self if fn(d))

    def map(self, fn):
        return _Docs(fn(dict(d)) for d in self)


def _jinja(template: str, doc: dict):
    import jinja2

    return jinja2.Template(template).render(**doc)


XWINOGRAD_DOCS = make_rows("xwinograd", 4, seed=5) + [
    {"sentence": "The cup fell off _ .  Then it broke.", "option1": "the table", "option2": "the shelf", "answer": "2"},
    {"sentence": "Ann thanked Bea because _", "option1": "Ann", "option2": "Bea", "answer": "1"},  # blank at the end
    {"sentence": "_ said  hi to Bea . ", "option1": "Ann", "option2": "Cy", "answer": "1"},  # at the start
    {"sentence": "猫は_を見た。", "option1": "犬", "option2": "鳥", "answer": "2"},
]

TRICKY = {"pawsx": [{"id": "1", "sentence1": "He ( the king ) did n't say \" yes \" , he said no .",
                     "sentence2": "The king said no , he did n't say yes .", "label": 0},
                    {"id": "2", "sentence1": "It 's a test;", "sentence2": "it is a test .", "label": 1}]}


def test_lm_eval_family_reproduces_the_harness_strings(made_up):
    """Our lm_eval (context, options) equal lm-eval's (doc_to_text, target_delimiter +
    choice) built by the installed harness's own YAML and utils.py, for every language;
    for XWinograd ("multiple input" mode) the per-option contexts equal its doc_to_choice
    and every option is its target_delimiter + doc_to_target."""
    tasks = _lm_eval_tasks_dir()
    lm_utils = {"paws-x": _lm_utils(tasks / "paws-x" / "utils.py"), "xcopa": _lm_utils(tasks / "xcopa" / "utils.py"),
                "xwinograd": _lm_utils(tasks / "xwinograd" / "utils.py")}
    checked = 0
    for lang in get_task("pawsx").languages:
        cfg = _lm_yaml(tasks / "paws-x" / f"paws_{lang}.yaml")
        docs = make_rows("pawsx", 6, seed=1) + TRICKY["pawsx"]
        if REAL.is_dir() and (REAL / "pawsx" / lang).is_dir():
            with open(REAL / "pawsx" / lang / "test_2k.tsv", encoding="utf-8", newline="") as f:
                docs += list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[:200]
        processed = lm_utils["paws-x"].process_docs_paraphrases(_Docs(docs)) if "process_docs" in cfg else docs
        template = get_task("pawsx").templates["lm_eval"]
        for raw, doc in zip(docs, processed):
            context, options, contexts = template.render(dict(raw), PAWSX_LM[lang], lang)
            choices = ast.literal_eval(_jinja(cfg["doc_to_choice"], doc))
            assert context == cfg["doc_to_text"] == "" and contexts == ()
            assert options == tuple(cfg["target_delimiter"] + c for c in choices), (lang, raw)
            checked += 1
    for lang in get_task("xnli").languages:
        cfg = _lm_yaml(tasks / "xnli" / f"xnli_{lang}.yaml")
        template = get_task("xnli").templates["lm_eval"]
        for doc in make_rows("xnli", 6, seed=2):
            context, options, contexts = template.render(dict(doc), XNLI_LM[lang], lang)
            choices = ast.literal_eval(_jinja(cfg["doc_to_choice"], doc))
            assert (context, options) == ("", tuple(cfg.get("target_delimiter", " ") + c for c in choices)), lang
            assert contexts == ()
            checked += 1
    for lang in get_task("xcopa").languages:
        template = get_task("xcopa").templates["lm_eval"]
        docs = make_rows("xcopa", 6, seed=3)
        if REAL.is_dir():
            path = REAL / "xcopa" / ("en/test.jsonl" if lang == "en" else f"data/{lang}/test.{lang}.jsonl")
            if path.is_file():
                docs += [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()[:100]]
        if lang == "en":  # English is lm-eval's COPA (super_glue): same connectors
            utils = _lm_utils(tasks / "super_glue" / "copa" / "utils.py")
            to_text, to_choice = utils.doc_to_text, utils.doc_to_choice
        else:
            cfg = _lm_yaml(tasks / "xcopa" / f"default_{lang}.yaml")
            to_text = getattr(lm_utils["xcopa"], cfg["doc_to_text"].split(".")[-1])
            to_choice = lm_utils["xcopa"].doc_to_choice
        for doc in docs:
            context, options, contexts = template.render(dict(doc), XCOPA_LM[lang], lang)
            assert context == to_text(dict(doc)) and contexts == (), lang
            # COPA's choices already start with " " and the harness adds target_delimiter " "
            # as well: a double space that XCOPA's files do not have; we keep one.
            assert options == tuple(" " + c.lstrip(" ") for c in to_choice(dict(doc))), lang
            checked += 1
    for lang in get_task("xstorycloze").languages:
        cfg = _lm_yaml(tasks / "xstorycloze" / f"default_{lang}.yaml")
        template = get_task("xstorycloze").templates["lm_eval"]
        for doc in make_rows("xstorycloze", 4, seed=4):
            context, options, contexts = template.render(dict(doc), {}, lang)
            assert context == _jinja(cfg["doc_to_text"], doc) and contexts == ()
            assert options == tuple(" " + c for c in ast.literal_eval(_jinja(cfg["doc_to_choice"], doc)))
            assert int(_jinja(cfg["doc_to_target"], doc)) == get_task("xstorycloze").gold(doc["answer_right_ending"])
            checked += 1
    for lang in get_task("xwinograd").languages:
        cfg = _lm_yaml(tasks / "xwinograd" / f"xwinograd_{'jp' if lang == 'ja' else lang}.yaml")
        template = get_task("xwinograd").templates["lm_eval"]
        utils = lm_utils["xwinograd"]
        delimiter = cfg.get("target_delimiter", " ")
        for doc in XWINOGRAD_DOCS:
            context, options, contexts = template.render(dict(doc), {}, lang)
            # multiple-input mode: contexts differ per option, the continuation is shared
            assert contexts == tuple(utils.doc_to_choice(doc)), (lang, doc)
            assert options == (delimiter + utils.doc_to_target(doc),) * 2, (lang, doc)
            assert context == doc["sentence"][: doc["sentence"].index("_")]  # the text the contexts share
            assert utils.doc_to_text(doc) == get_task("xwinograd").gold(doc["answer"])
            checked += 1
    assert checked > 100


@pytest.mark.parametrize("lang", LANGS["xwinograd"])
def test_xwinograd_lm_eval_items_are_the_harness_requests(made_up, lang):
    """lm-eval's own ConfigurableTask (the installed YAML and utils.py, "multiple input"
    mode) builds the requests (prefix + contexts[j], " " + target) of our lm_eval items,
    0-shot and with our demonstrations, in our order, as its few-shot turns: the gold
    option's context, the continuation, "\\n\\n"."""
    tasks = _lm_eval_tasks_dir()
    datasets = pytest.importorskip("datasets")
    from lm_eval.api.task import ConfigurableTask

    def read(split: str) -> list[dict]:  # the raw rows, as the hub holds them
        path = made_up["root"] / "xwinograd" / lang / f"{split}.jsonl"
        return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]

    docs, dev = read("test") + XWINOGRAD_DOCS, read("dev")
    utils = _lm_utils(tasks / "xwinograd" / "utils.py")
    cfg = _lm_yaml(tasks / "xwinograd" / f"xwinograd_{'jp' if lang == 'ja' else lang}.yaml")
    for key in ("doc_to_text", "doc_to_target", "doc_to_choice"):
        cfg[key] = getattr(utils, cfg[key].split(".")[-1])
    cfg["custom_dataset"] = lambda **kwargs: datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})
    template = get_task("xwinograd").templates["lm_eval"]

    def as_item(doc: dict, prefix: str) -> EvalItem:
        context, options, contexts = template.render(dict(doc), {}, lang)
        return EvalItem("xwinograd", lang, "x", prefix, context, options, 0, contexts=contexts)

    checked = 0
    for shots, seed in ((0, 0), (2, 3), (3, 7)):
        picks = random.Random(seed).sample(range(len(dev)), shots)  # build_items' draw
        cfg["fewshot_config"] = {"sampler": "first_n", "samples": [dev[n] for n in picks]}
        harness = ConfigurableTask(config=dict(cfg))
        ours = build_items("xwinograd", lang, template="lm_eval", shots=shots, seed=seed, protocol="same",
                           sources=made_up["sources"])
        extra = [as_item(doc, ours[0].prefix) for doc in XWINOGRAD_DOCS]  # the tricky rows, same prefix
        assert len(ours) + len(extra) == len(docs)
        for item, doc in zip(ours + extra, harness.test_docs()):
            ctx = harness.fewshot_context(doc, shots)
            requests = harness.construct_requests(doc, ctx, metadata=("xwinograd", 0, 1))
            assert [r.arguments for r in requests] == [(item.prompt(j), o) for j, o in enumerate(item.options)]
            assert item.context == doc["sentence"][: doc["sentence"].index("_")]
            checked += 1
    assert checked == 3 * len(docs)


# ---------------------------------------------------------------- real samples
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason="../shared/data/real is absent")


@needs_real
def test_real_samples_load_through_the_task_definitions(tmp_path):
    """PAWS-X de/en/zh and XCOPA en/vi/zh, described in YAML (English COPA has its own layout)."""
    (tmp_path / "run.yaml").write_text(f"""\
eval:
  tasks: [pawsx, xcopa]
  sources:
    pawsx:
      dev: {REAL}/pawsx/{{lang}}/dev_2k.tsv
      test: {REAL}/pawsx/{{lang}}/test_2k.tsv
    xcopa:
      dev: {REAL}/xcopa/data/{{lang}}/val.{{lang}}.jsonl
      test: {REAL}/xcopa/data/{{lang}}/test.{{lang}}.jsonl
      languages:
        en: {{dev: {REAL}/xcopa/en/train.jsonl, test: {REAL}/xcopa/en/test.jsonl}}
""")
    sources = load_run(tmp_path / "run.yaml").eval.sources
    expected = {("pawsx", "de"): (2000, 2000), ("pawsx", "en"): (2000, 2000), ("pawsx", "zh"): (2000, 2000),
                ("xcopa", "en"): (400, 500), ("xcopa", "vi"): (100, 500), ("xcopa", "zh"): (100, 500)}
    for (task, lang), (n_dev, n_test) in expected.items():
        assert len(load_rows(get_task(task), lang, "dev", sources=sources)) == n_dev
        for family in FAMILIES:
            items = build_items(task, lang, split="test", template=family, shots=3, protocol="cross", pivot="en",
                                seed=1, sources=sources)
            assert len(items) == n_test
            assert all(0 <= i.gold < len(i.options) and len(set(i.options)) == len(i.options) for i in items)
            assert len({i.prefix for i in items}) == 1 and items[0].prefix.count("\n\n") == 3
            golds = [i.gold for i in items]
            assert 0.3 < sum(golds) / len(golds) < 0.7  # both labels, roughly balanced
    same = build_items("xcopa", "zh", template="afp", protocol="same", sources=sources)[0]
    assert same.context.startswith("起因: ") or same.context.startswith("影响: ")


# ---------------------------------------------------------------- the synthetic world
def test_world_tasks_load_for_every_language_with_lexicon_words(world):
    lexicon = json.loads((world / "lexicon.json").read_text(encoding="utf-8"))
    languages = json.loads((world / "manifest.json").read_text())["languages"]
    codes = [lang["code"] if isinstance(lang, dict) else lang for lang in languages]
    for task in ("pawsx", "xcopa", "facts"):
        assert task_languages(task, world_dir=world) == tuple(sorted(codes))
        for lang in codes:
            w = {c: lexicon[c][lang] for c in ("right", "yes", "no", "because", "so", "question", "answer")}
            rows = load_rows(get_task(task), lang, "test", world_dir=world)
            for family in FAMILIES:
                items = build_items(task, lang, template=family, protocol="same", world_dir=world)
                assert len(items) == len(rows) == 40
                for item, row in zip(items, rows):
                    text = item.context + item.options[item.gold]
                    if task == "pawsx":  # the corpus: "S1 , right ? yes , S2 ."
                        s1 = row["sentence1"][:-2]
                        answer = w["yes"] if row["gold"] == 1 else w["no"]
                        assert text == f"{s1} , {w['right']} ? {answer} , {row['sentence2']}"
                    elif task == "xcopa":  # "EFFECT because CAUSE ." / "CAUSE so EFFECT ."
                        joiner = w["because"] if row["question"] == "cause" else w["so"]
                        gold = row[f"choice{row['gold'] + 1}"]
                        assert text == f"{row['premise'][:-2]} {joiner} {gold}"
                    else:  # "question : NAME REL WHAT ? answer : VALUE ."
                        assert row["question"].startswith(f"{w['question']} : ")
                        assert text == f"{row['question']} {w['answer']} : {row['choices'][row['gold']]} ."
    corpus = (world / "corpus" / f"{codes[0]}.txt").read_text(encoding="utf-8")
    w = {c: lexicon[c][codes[0]] for c in ("right", "yes", "no", "because", "so", "question", "answer")}
    for joint in (f" , {w['right']} ? {w['yes']} , ", f" , {w['right']} ? {w['no']} , ", f" {w['so']} ",
                  f" {w['because']} ", f"{w['question']} : ", f" ? {w['answer']} : "):
        assert joint in corpus, f"the world template's {joint!r} never occurs in the world's corpus"


def test_real_only_tasks_refuse_the_world(world):
    with pytest.raises(TaskError, match="no synthetic-world version"):
        build_items("xnli", "qaa", world_dir=world)
    with pytest.raises(TaskError, match="exists only in the synthetic world"):
        build_items("facts", "en")


# ---------------------------------------------------------------- k-shot and protocols
def test_demonstrations_come_from_dev_are_shared_and_depend_on_the_seed(world):
    dev = build_items("pawsx", "qab", split="dev", protocol="same", world_dir=world)
    test = build_items("pawsx", "qab", split="test", protocol="same", world_dir=world)
    dev_blocks = {i.context + i.options[i.gold] + "\n\n" for i in dev}
    test_blocks = {i.context + i.options[i.gold] + "\n\n" for i in test}
    prefixes = {}
    for seed in (0, 1, 2):
        items = build_items("pawsx", "qab", split="test", shots=4, protocol="same", seed=seed, world_dir=world)
        assert len({i.prefix for i in items}) == 1  # one shared prefix
        prefix = items[0].prefix
        blocks = [b + "\n\n" for b in prefix.split("\n\n")[:-1]]
        assert len(blocks) == 4 and all(b in dev_blocks for b in blocks)
        assert not any(b in test_blocks for b in blocks)
        assert [(i.context, i.options) for i in items] == [(i.context, i.options) for i in test]
        prefixes[seed] = prefix
    assert len(set(prefixes.values())) == 3  # seeds differ
    again = build_items("pawsx", "qab", split="test", shots=4, protocol="same", seed=1, world_dir=world)
    assert again[0].prefix == prefixes[1]  # and are reproducible


def test_dev_evaluation_never_queries_its_own_demonstrations(world):
    items = build_items("xcopa", "qab", split="dev", shots=5, protocol="same", seed=0, world_dir=world)
    assert len(items) == 20 - 5
    for item in items:
        assert item.context + item.options[item.gold] not in item.prefix


def test_cross_protocol_puts_pivot_words_in_the_template_and_target_text_in_the_query(world):
    lexicon = json.loads((world / "lexicon.json").read_text(encoding="utf-8"))
    rows = load_rows(get_task("pawsx"), "qac", "test", world_dir=world)
    items = build_items("pawsx", "qac", shots=2, protocol="cross", pivot="qaa", world_dir=world)
    pivot_right, target_right = lexicon["right"]["qaa"], lexicon["right"]["qac"]
    for item, row in zip(items, rows):
        assert item.context == f"{row['sentence1'][:-2]} , {pivot_right} ?"
        assert target_right not in item.context.split()
        assert {o.split()[0] for o in item.options} == {lexicon["no"]["qaa"], lexicon["yes"]["qaa"]}
    pivot_dev = {i.context + i.options[i.gold] for i in build_items("pawsx", "qaa", split="dev", protocol="same",
                                                                    world_dir=world)}
    assert all(block in pivot_dev for block in items[0].prefix.split("\n\n")[:-1])  # pivot demonstrations
    same = build_items("pawsx", "qac", shots=2, protocol="same", world_dir=world)
    assert same[0].context == f"{rows[0]['sentence1'][:-2]} , {target_right} ?"


def test_cross_protocol_on_real_tasks_uses_the_pivot_words(made_up):
    item = build_items("xcopa", "zh", template="afp", protocol="cross", pivot="en", sources=made_up["sources"])[0]
    assert item.context.split(":")[0] in ("cause", "effect") and item.context.endswith(("because", "so"))
    item = build_items("xcopa", "zh", template="afp", protocol="same", sources=made_up["sources"])[0]
    assert item.context.split(":")[0] in ("起因", "影响") and item.context.endswith(("因为", "所以"))


def test_building_items_leaves_global_rng_alone(world, made_up):
    random.seed(123)
    torch.manual_seed(123)
    py_state, torch_state = random.getstate(), torch.get_rng_state()
    build_items("facts", "qab", shots=3, seed=7, protocol="cross", pivot="qaa", world_dir=world)
    build_items("xnli", "de", shots=2, seed=5, template="lm_eval", protocol="same", sources=made_up["sources"])
    assert random.getstate() == py_state
    assert torch.equal(torch.get_rng_state(), torch_state)


# ---------------------------------------------------------------- bad input: clear errors before any model
def _src(path_dev, path_test, **kw) -> dict:
    return {"xcopa": TaskSourceConfig(dev=str(path_dev) if path_dev else None,
                                      test=str(path_test) if path_test else None, **kw)}


def test_missing_split_or_file(tmp_path, made_up):
    with pytest.raises(TaskError, match=r"'xwinograd', language 'en': no dev split: the hub dataset "
                                        r"'Muennighoff/xwinograd' has only \['test'\]"):
        build_items("xwinograd", "en", shots=1, protocol="same")
    write_rows(tmp_path / "en" / "test.jsonl", make_rows("xcopa", 4, 0), "jsonl")
    with pytest.raises(TaskError, match=r"no dev split: eval.sources.xcopa gives local files for \['test'\] only"):
        build_items("xcopa", "en", shots=1, protocol="same", sources=_src(None, tmp_path / "{lang}" / "test.jsonl"))
    with pytest.raises(TaskError, match=r"language 'zh', split 'test' \(.*zh/test.jsonl\): file not found"):
        build_items("xcopa", "zh", protocol="same", sources=_src(None, tmp_path / "{lang}" / "test.jsonl"))


def test_missing_or_misnamed_column_says_which(tmp_path):
    rows = [{("premiss" if k == "premise" else k): v for k, v in r.items()} for r in make_rows("xcopa", 4, 0)]
    write_rows(tmp_path / "en.jsonl", rows, "jsonl")
    with pytest.raises(TaskError) as info:
        build_items("xcopa", "en", protocol="same", sources=_src(None, tmp_path / "{lang}.jsonl"))
    message = str(info.value)
    assert "task 'xcopa', language 'en', split 'test'" in message and "en.jsonl" in message
    assert "missing column(s) ['premise']" in message and "'premiss'" in message
    assert "eval.sources.xcopa.columns" in message
    fixed = _src(None, tmp_path / "{lang}.jsonl", columns={"premise": "premiss"})
    assert len(build_items("xcopa", "en", protocol="same", sources=fixed)) == 4


def test_label_out_of_range(tmp_path):
    rows = make_rows("xcopa", 4, 0)
    rows[2]["label"] = 2
    write_rows(tmp_path / "en.jsonl", rows, "jsonl")
    with pytest.raises(TaskError, match=r"row 2: label 2 in column 'label' is out of range: xcopa has 2 options"):
        build_items("xcopa", "en", protocol="same", sources=_src(None, tmp_path / "{lang}.jsonl"))
    rows[2]["label"] = "yes"
    write_rows(tmp_path / "en.jsonl", rows, "jsonl")
    with pytest.raises(TaskError, match=r"row 2: label column 'label' has 'yes', not a label"):
        build_items("xcopa", "en", protocol="same", sources=_src(None, tmp_path / "{lang}.jsonl"))


def test_empty_language(tmp_path):
    write_rows(tmp_path / "de" / "test.tsv", [], "tsv")
    src = {"pawsx": TaskSourceConfig(test=str(tmp_path / "{lang}" / "test.tsv"))}
    with pytest.raises(TaskError, match=r"task 'pawsx', language 'de', split 'test' .*no items"):
        build_items("pawsx", "de", protocol="same", sources=src)


def test_more_shots_than_dev_items(world):
    with pytest.raises(TaskError, match=r"language 'qaa', split 'dev'.*21 shots asked, the dev split has only 20"):
        build_items("facts", "qab", shots=21, protocol="cross", pivot="qaa", world_dir=world)


def test_templates_without_an_option_slot_are_refused_when_defined():
    with pytest.raises(TaskError, match=r"has no \{option\} slot"):
        Template(context="{premise}\nAnswer:", option=" {hypothesis}", choices=("a", "b", "c"))
    with pytest.raises(TaskError, match="options render alike"):  # the released XNLI defect
        Task(name="bad_xnli", fields=("premise", "hypothesis"), label="label", gold=int, n_options=3,
             languages=("en",),
             templates={f: Template(context="{premise}", option=" {hypothesis}{option}",
                                    choices=("{w[x]}", "{w[x]}", "{w[x]}"), words={"en": {"x": ""}})
                        for f in FAMILIES},
             example={"premise": "p", "hypothesis": "h", "label": 0})
    with pytest.raises(TaskError, match=r"template words for 'de' lack \['yes'\]"):
        Template(context="", option="{option}", choices=("{w[no]}", "{w[yes]}"), words={"de": {"no": "Nein"}})


def test_partial_scoring_templates_keep_the_same_rules():
    """With a fill string (lm-eval's multiple-input mode) the answer goes in the context: the
    fill needs the {option} slot, the shared option string must not have it, and answers
    whose contexts render alike are refused."""
    ok = Template(context="{part1}", fill=" {option}", option=" {part2}", choices=("{a}", "{b}"))
    context, options, contexts = ok.render({"part1": "P", "part2": "Q", "a": "x", "b": "y"}, {}, "en")
    assert (context, options, contexts) == ("P", (" Q", " Q"), ("P x", "P y"))
    with pytest.raises(TaskError, match=r"fill string '\{part1\}' has no \{option\} slot"):
        Template(context="", fill="{part1}", option=" {part2}", choices=("a", "b"))
    with pytest.raises(TaskError, match=r"contains the \{option\} slot, but with a fill string"):
        Template(context="{part1}", fill="{option}", option=" {option}{part2}", choices=("a", "b"))
    with pytest.raises(TaskError, match=r"template context .* contains the \{option\} slot"):
        Template(context="{part1}{option}", fill="{option}", option=" {part2}", choices=("a", "b"))
    with pytest.raises(TaskError, match="options render alike"):
        Task(name="bad_wino", fields=("sentence", "option1", "option2"), label="answer", gold=int, n_options=2,
             languages=("en",),
             templates={f: Template(context="{sentence}", fill="{option}", option=" end", words={"en": {"x": ""}},
                                    choices=("{option1}{w[x]}", "{option1}")) for f in FAMILIES},
             example={"sentence": "s", "option1": "a", "option2": "b", "answer": 0})


def test_other_bad_requests():
    with pytest.raises(TaskError, match="Unknown template family 'lm-eval'. Did you mean 'lm_eval'"):
        build_items("pawsx", "en", template="lm-eval", protocol="same")
    with pytest.raises(TaskError, match="Unknown split 'validation'"):
        build_items("pawsx", "en", split="validation")
    with pytest.raises(TaskError, match="protocol 'cross' needs a pivot"):
        build_items("pawsx", "de")
    with pytest.raises(TaskError, match=r"template 'afp' has no words for 'sw'.*Use protocol 'cross'"):
        build_items("xnli", "sw", protocol="same")


def test_build_eval_items_reports_every_problem_at_once(made_up, world):
    cfg = EvalConfig(tasks=["xcopa", "xwinograd", "pawsx"], languages=["en", "zh", "qq"], shots=1,
                     protocol="same", sources={"xcopa": made_up["sources"]["xcopa"],
                                               "pawsx": made_up["sources"]["pawsx"]})
    with pytest.raises(TaskError) as info:
        build_eval_items(cfg, pivot="en")
    message = str(info.value)
    assert "xwinograd" in message and "no dev split" in message  # the hub has test only
    assert "eval.languages: no task of ['xcopa', 'xwinograd', 'pawsx'] has language 'qq'. Available: de" in message
    ok = EvalConfig(tasks=["facts", "pawsx", "xcopa"], shots=2, seeds=[0, 1], max_items=5)
    built = build_eval_items(ok, pivot="qaa", world_dir=world)
    assert len(built) == 3 * 4 * 2 and all(len(items) == 5 for items in built.values())
