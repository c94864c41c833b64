"""The evaluator's scoring engine: cached-prefix scores equal a plain full forward per
request, for RoPE (Llama), absolute-position (GPT-2) and ALiBi (BLOOM) models, either
padding side, BPE merges across the prefix boundary, batching, per-option contexts
(lm-eval's "multiple input" mode), records, and parity with lm-evaluation-harness's HFLM.
Tiny models and tokenizers built locally; no hub."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import json
import random
import time

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    BloomConfig,
    BloomForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from xalign.eval.items import EvalItem, OptionScore
from xalign.eval.records import accuracy_from_records, read_records, record_prompts, write_records
from xalign.eval.scoring import (
    choose,
    leading_tokens,
    normalized,
    score_items,
    score_items_with_stats,
)

SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]
HEADER = "Decide whether the answer is right.\n\n"
DEMOS = (
    HEADER
    + "Question: is the cat on the mat? Answer: yes\n\n"
    + "Question: is the dog in the park? Answer: no\n\n"
)
QUESTIONS = [
    "Question: is the cat happy? Answer:",
    "Question: did a dog run in the park today? Answer:",
    "Question: is the mat red? Answer: ",  # trailing space moves to the option
    "Question: is it? Answer:",
    "Question: the cat sat on the mat and the dog ran in the park, so is the bird blue? Answer:",
]
OPTIONS = (" yes", " no", " maybe not")
CORPUS = [DEMOS, *QUESTIONS, "yes no maybe not", "the cat sat on the mat", "a dog ran in the park",
          "a bird is blue and the mat is red today"] * 3


# --- tokenizers and models ------------------------------------------------------------


def wordlevel_tokenizer(padding_side: str = "right") -> PreTrainedTokenizerFast:
    core = Tokenizer(models.WordLevel(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.train_from_iterator(CORPUS, trainers.WordLevelTrainer(special_tokens=SPECIALS))
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", padding_side=padding_side)


def bytelevel_tokenizer(padding_side: str = "right", *, template_bos: bool = False) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2 style): merges can cross a string split. ``template_bos``: the
    tokenizer adds <s> itself (like Llama's)."""
    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if template_bos:
        core.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", core.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", padding_side=padding_side)


def build_model(kind: str, vocab_size: int, *, seed: int = 0, dtype=torch.float32):
    torch.manual_seed(seed)
    if kind == "llama":
        config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
        model = LlamaForCausalLM(config)
    elif kind == "gpt2":
        config = GPT2Config(vocab_size=vocab_size, n_positions=512, n_embd=32, n_layer=2, n_head=4)
        model = GPT2LMHeadModel(config)
    elif kind == "bloom":
        config = BloomConfig(vocab_size=vocab_size, hidden_size=32, n_layer=2, n_head=4)
        model = BloomForCausalLM(config)
    elif kind == "gemma3":  # sliding-window and global layers, softcapped logits: the LM head's output is processed
        config = Gemma3TextConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=4,
                                  layer_types=["sliding_attention", "full_attention"] * 2, max_position_embeddings=512,
                                  final_logit_softcapping=5.0, pad_token_id=0, bos_token_id=2, eos_token_id=3)
        model = Gemma3ForCausalLM(config)
    else:
        raise ValueError(kind)
    # random init gives near-uniform predictions; sharpen them so scores differ clearly
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(20.0)
    return model.to(dtype).eval()


#: lm-eval's "multiple input" shape (Winogrande, XWinograd): (part 1, the names that fill the
#: blank, part 2). Option j's context is part 1 + name j; part 2 is scored after each.
#: (No request here has the tokens of a make_items request less its last token but a longer
#: continuation: HFLM's one-token logits cache would mis-score that one, logits_cache=False not.)
WINOGRAD = [
    ("Question: is the ", ("cat", "dog"), " happy today? Answer: yes"),
    ("the cat sat on the ", ("mat", "park"), " and the dog ran in the park"),
    ("", ("a dog", "a bird", "the cat"), " ran in the park today"),  # the blank opens the sentence
    ("a bird is blue and the ", ("mat", "cat"), " is red today"),
    ("Question: did ", ("a dog", "the cat"), " run in the park today? Answer:  no"),
]


def winograd_items(prefix: str, *, task: str = "w") -> list[EvalItem]:
    """Items with per-option contexts (``EvalItem.contexts``) and a shared continuation."""
    return [EvalItem(task, "en", f"{task}-{i}", prefix, part1, (part2,) * len(names), i % len(names),
                     contexts=tuple(part1 + name for name in names))
            for i, (part1, names, part2) in enumerate(WINOGRAD)]


def make_items(prefix: str, *, task: str = "t", extra: bool = True) -> list[EvalItem]:
    items = [EvalItem(task, "en", f"{task}-{i}", prefix, q, OPTIONS, i % 3) for i, q in enumerate(QUESTIONS)]
    if extra:
        items.append(EvalItem(task, "en", f"{task}-empty", prefix, "", (" yes", "no"), 0))
        items.append(EvalItem(task, "en", f"{task}-two", prefix, "Question: is the bird blue?", (" yes", " no"), 1))
    return items


# --- the reference: a plain forward over the whole sequence, one request at a time ----


def reference_option(model, tokenizer, prompt: str, option: str, lead: list[int]) -> OptionScore:
    """lm-eval's split written out plainly, then model(ids) with default positions."""
    context = prompt.rstrip()
    continuation = prompt[len(context):] + option
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    if context or lead:
        context_ids = lead + enc(context)
        option_ids = (lead + enc(context + continuation))[len(context_ids):]
    else:
        prefix_token = tokenizer.bos_token_id
        option_ids = enc(continuation)
        context_ids = [prefix_token]
        if option_ids[0] == prefix_token:
            context_ids, option_ids = option_ids[:1], option_ids[1:]
    ids = torch.tensor([context_ids + option_ids])
    with torch.no_grad():
        logprobs = model(ids).logits[0].float().log_softmax(-1)[len(context_ids) - 1: -1]
    target = torch.tensor(option_ids)
    return OptionScore(float(logprobs.gather(-1, target[:, None]).sum()), len(option_ids), len(option),
                       bool((logprobs.argmax(-1) == target).all()))


def reference_scores(model, tokenizer, items, lead) -> list[list[OptionScore]]:
    return [[reference_option(model, tokenizer, it.prompt(j), o, lead) for j, o in enumerate(it.options)]
            for it in items]


def assert_scores_equal(got, want, tol=1e-4):
    assert len(got) == len(want)
    for g_item, w_item in zip(got, want):
        assert len(g_item) == len(w_item)
        for g, w in zip(g_item, w_item):
            assert g.n_tokens == w.n_tokens and g.n_chars == w.n_chars
            assert abs(g.logprob - w.logprob) <= tol, (g, w)
            assert g.is_greedy == w.is_greedy


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run faster on one thread (and do not fight a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def wl_tokenizers():
    return {side: wordlevel_tokenizer(side) for side in ("left", "right")}


@pytest.fixture(scope="module")
def bpe():
    return bytelevel_tokenizer()


# --- cached prefix == full forward ----------------------------------------------------


@pytest.mark.parametrize("kind", ["llama", "gpt2", "bloom", "gemma3"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_cached_prefix_equals_full_forward(kind, side, wl_tokenizers):
    tokenizer = wl_tokenizers[side]
    model = build_model(kind, len(tokenizer))
    items = make_items(DEMOS, task="a") + make_items(HEADER, task="b") + make_items("", task="c")
    items += winograd_items(DEMOS, task="wa") + winograd_items("", task="wc")
    items.append(EvalItem("d", "en", "prefix-is-context", "Question: is the cat happy? Answer:", "", OPTIONS, 0))
    items.append(EvalItem("d", "en", "all-empty", "", "", OPTIONS, 0))
    # context empty, one-token options, alone with its prefix: the prefix forward is all it takes
    items.append(EvalItem("e", "en", "no-forward", "Question: is the dog happy? Answer:", "", (" yes", " no"), 0))
    result = score_items_with_stats(model, tokenizer, items, batch_size=4)
    assert_scores_equal(result.scores, reference_scores(model, tokenizer, items, [tokenizer.bos_token_id]))
    assert result.stats.prefixes == 4 and result.stats.fallbacks == 0
    assert result.stats.cached == sum(len(it.options) for it in items if it.prefix)


@pytest.mark.parametrize("kind", ["llama", "gpt2", "bloom", "gemma3"])
@pytest.mark.parametrize("reuse_prefix", [True, False], ids=["prefix-cache", "no-cache"])
def test_lm_head_only_at_read_positions_gives_the_full_vocab_scores(kind, reuse_prefix, wl_tokenizers):
    """The LM head runs at the read positions only (fewer head rows than tokens run), and the
    scores, greedy flags and predictions equal those from logits at every position."""
    tokenizer = wl_tokenizers["right"]
    model = build_model(kind, len(tokenizer))
    items = make_items(DEMOS, task="a") + make_items("", task="c") + winograd_items(DEMOS, task="w")
    head_rows = []
    handle = model.get_output_embeddings().register_forward_hook(lambda m, a, o: head_rows.append(o.shape[:-1].numel()))
    fast = score_items_with_stats(model, tokenizer, items, batch_size=4, reuse_prefix=reuse_prefix)
    fast_rows, head_rows[:] = sum(head_rows), []
    full = score_items_with_stats(model, tokenizer, items, batch_size=4, reuse_prefix=reuse_prefix, full_vocab=True)
    handle.remove()
    assert fast.stats == full.stats
    assert fast_rows < full.stats.tokens_run <= sum(head_rows)  # padding counts in the full logits too
    for mine, theirs in zip(fast.scores, full.scores, strict=True):
        for a, b in zip(mine, theirs, strict=True):
            assert abs(a.logprob - b.logprob) <= 1e-5
            assert (a.n_tokens, a.n_chars, a.is_greedy) == (b.n_tokens, b.n_chars, b.is_greedy)
        assert choose(mine) == choose(theirs)


def test_no_items(wl_tokenizers):
    tokenizer = wl_tokenizers["right"]
    assert score_items(build_model("llama", len(tokenizer)), tokenizer, []) == []


@pytest.mark.parametrize("kind", ["llama", "bloom"])
def test_no_bos_and_empty_context_uses_prefix_token(kind, wl_tokenizers):
    tokenizer = wl_tokenizers["left"]
    model = build_model(kind, len(tokenizer))
    items = make_items(DEMOS) + make_items("") + [EvalItem("d", "en", "blank", "", "  ", OPTIONS, 0)]
    items += winograd_items(DEMOS) + winograd_items("", task="v")
    # per-option contexts: only option 0's prompt is empty (the prefix token is its context)
    items.append(EvalItem("d", "en", "one-empty", "", "", (" yes no", " yes no"), 1, contexts=(" ", "maybe")))
    got = score_items(model, tokenizer, items, batch_size=5, add_bos=False)
    assert_scores_equal(got, reference_scores(model, tokenizer, items, []))


def test_bpe_boundary_merge_uses_the_shared_part(bpe):
    """Byte-level BPE: "ca" + "t" becomes one token, and a prefix ending in "\n\n" ends in
    the token "ĊĊ" alone but in "Ċ", "Ċ" before text: the cache is cropped to the shared tokens."""
    prefix_ids = bpe("Question: is the ca", add_special_tokens=False)["input_ids"]
    full_ids = bpe("Question: is the cat happy Answer:", add_special_tokens=False)["input_ids"]
    assert full_ids[: len(prefix_ids)] != prefix_ids
    demo_ids = bpe(DEMOS, add_special_tokens=False)["input_ids"]
    assert bpe(DEMOS + QUESTIONS[0], add_special_tokens=False)["input_ids"][: len(demo_ids)] != demo_ids
    model = build_model("llama", len(bpe))
    merged = [EvalItem("m", "en", str(i), "Question: is the ca", f"t happy{'?' * i} Answer:", OPTIONS, 0)
              for i in range(3)]
    items = merged + make_items(DEMOS) + winograd_items(DEMOS)
    result = score_items_with_stats(model, bpe, items, batch_size=4)
    n_requests = sum(len(it.options) for it in items)
    assert result.stats.boundary_merges == n_requests and result.stats.fallbacks == 0
    assert result.stats.cached == n_requests and result.stats.prefixes == 2
    assert_scores_equal(result.scores, reference_scores(model, bpe, items, [bpe.bos_token_id]))


def test_bpe_merge_at_the_first_token_falls_back(bpe):
    """Without BOS, a prefix whose first token merges with the context shares nothing."""
    model = build_model("gpt2", len(bpe))
    items = [EvalItem("f", "en", str(i), "ca", f"t sat on the mat{'?' * i}", OPTIONS, 0) for i in range(3)]
    items += make_items("Question: is the cat on the mat? Answer: yes\n")
    result = score_items_with_stats(model, bpe, items, batch_size=4, add_bos=False)
    assert result.stats.fallbacks == 3 * len(OPTIONS)
    assert result.stats.cached == result.stats.requests - result.stats.fallbacks > 0
    assert_scores_equal(result.scores, reference_scores(model, bpe, items, []))


def test_batching_longest_first_and_input_order(wl_tokenizers):
    tokenizer = wl_tokenizers["right"]
    model = build_model("gpt2", len(tokenizer))
    items = make_items(DEMOS) + make_items("")
    random.Random(1).shuffle(items)
    spans = {}

    def record(module, args, kwargs):
        past = kwargs.get("cache", kwargs.get("past_key_values"))
        if kwargs["use_cache"] and past is None:
            return  # the prefix forward
        width = kwargs["input_ids"].shape[1] + (past.get_seq_length() if past is not None else 0)
        spans[size].append(width)

    hook = model.register_forward_pre_hook(record, with_kwargs=True)
    by_size = {}
    try:
        for size in (1, 3, 16):
            spans[size] = []
            by_size[size] = score_items(model, tokenizer, items, batch_size=size)
    finally:
        hook.remove()
    for size in (3, 16):
        assert_scores_equal(by_size[size], by_size[1], tol=1e-5)
    assert_scores_equal(by_size[1], reference_scores(model, tokenizer, items, [tokenizer.bos_token_id]))
    for size in (1, 3, 16):  # the first batch is the longest (out of memory comes first)
        assert spans[size][0] == max(spans[size]) and len(spans[size]) > 1


def test_prefix_encoded_once_per_distinct_prefix(wl_tokenizers):
    tokenizer = wl_tokenizers["right"]
    model = build_model("llama", len(tokenizer))
    items = make_items(DEMOS, task="a") + make_items(HEADER, task="b")
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    prefix_lens = {1 + len(enc(DEMOS)), 1 + len(enc(HEADER))}
    calls = []
    hook = model.register_forward_pre_hook(
        lambda m, args, kwargs: calls.append((tuple(kwargs["input_ids"].shape), kwargs.get("cache", kwargs.get("past_key_values")))),
        with_kwargs=True)
    try:
        result = score_items_with_stats(model, tokenizer, items, batch_size=4)
    finally:
        hook.remove()
    from_scratch = [shape for shape, past in calls if past is None]
    assert sorted(shape[1] for shape in from_scratch) == sorted(prefix_lens)  # one forward per prefix
    assert all(shape[0] == 1 for shape in from_scratch)
    assert result.stats.prefixes == 2 and result.stats.cached == result.stats.requests
    # one row per item (every option's input, its tokens less the last, starts the longest
    # option's), and none for the items whose context is empty: their input is the prefix
    assert result.stats.rows == len(items) - 2 and len(calls) == 2 + result.stats.batches == 2 + 2 * 2
    # each prefix token was fed once in all, not once per option
    longest = sum(1 + len(enc(it.prefix + it.context + max(it.options, key=len))) - 1 - (1 + len(enc(it.prefix)))
                  for it in items)
    assert result.stats.tokens_run == sum(prefix_lens) + longest
    assert_scores_equal(result.scores, reference_scores(model, tokenizer, items, [tokenizer.bos_token_id]))


@pytest.mark.parametrize("kind", ["llama", "bloom"])
def test_per_option_contexts_score_their_own_prompt_on_one_prefix_cache(kind, wl_tokenizers):
    """lm-eval's multiple-input mode: option j is the shared continuation after its own
    context. Each option scores as a plain forward over ITS prompt (not the shared context),
    and the demonstrations, common to all options of all items, are still run once."""
    tokenizer = wl_tokenizers["right"]
    model = build_model(kind, len(tokenizer))
    items = winograd_items(DEMOS) + make_items(DEMOS)
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    calls = []
    hook = model.register_forward_pre_hook(
        lambda m, args, kwargs: calls.append((tuple(kwargs["input_ids"].shape), kwargs.get("cache", kwargs.get("past_key_values")))),
        with_kwargs=True)
    try:
        result = score_items_with_stats(model, tokenizer, items, batch_size=3)
    finally:
        hook.remove()
    assert [shape for shape, past in calls if past is None] == [(1, 1 + len(enc(DEMOS)))]  # the prefix, once
    assert result.stats.prefixes == 1 and result.stats.cached == result.stats.requests
    assert result.stats.fallbacks == 0 and result.stats.boundary_merges == 0
    lead = [tokenizer.bos_token_id]
    assert_scores_equal(result.scores, reference_scores(model, tokenizer, items, lead))
    for item, scores in zip(winograd_items(DEMOS), result.scores):
        # the option string is the same for every option, so are its length and tokens ...
        assert len({(s.n_tokens, s.n_chars) for s in scores}) == 1 and scores[0].n_chars == len(item.options[0])
        # ... and the scores differ by their contexts alone; the shared context would score them alike
        assert len({round(s.logprob, 4) for s in scores}) == len(scores)
        shared = reference_option(model, tokenizer, item.prefix + item.context, item.options[0], lead)
        assert all(abs(s.logprob - shared.logprob) > 1e-3 for s in scores)
    # an item with per-option contexts scores as one single-context item per option
    singles = [EvalItem("s", "en", f"{it.idx}/{j}", it.prefix, it.contexts[j], (o,), 0)
               for it in winograd_items(DEMOS) for j, o in enumerate(it.options)]
    flat = [s for scores in result.scores[: len(WINOGRAD)] for s in scores]
    assert_scores_equal([[s] for s in flat], score_items(model, tokenizer, singles, batch_size=3), tol=1e-5)


FIVE_SHOT = HEADER + "".join(q + a + "\n\n" for q, a in zip(QUESTIONS, (" yes", " no", "maybe not", " no", " yes")))


@pytest.mark.parametrize("tokenizer_kind", ["wordlevel", "bpe"])
def test_reuse_prefix_off_gives_the_same_scores(tokenizer_kind, wl_tokenizers, bpe):
    """``reuse_prefix=False`` (every request from scratch, prefix tokens in its row) scores
    as the cached prefix does, at batch size 1 and batched, on a 5-shot prefix; byte-level
    BPE merges across the prefix boundary ("\\n\\n" + text) included."""
    tokenizer = wl_tokenizers["right"] if tokenizer_kind == "wordlevel" else bpe
    model = build_model("llama", len(tokenizer))
    items = make_items(FIVE_SHOT) + winograd_items(FIVE_SHOT) + make_items(HEADER, task="h")
    runs = {(reuse, size): score_items_with_stats(model, tokenizer, items, batch_size=size, reuse_prefix=reuse)
            for reuse in (True, False) for size in (1, 4)}
    for result in runs.values():
        assert_scores_equal(result.scores, runs[(True, 4)].scores, tol=1e-4)
    assert_scores_equal(runs[(False, 1)].scores, reference_scores(model, tokenizer, items, [tokenizer.bos_token_id]))
    on, off = runs[(True, 4)].stats, runs[(False, 4)].stats
    assert on.prefixes == 2 and on.cached == on.requests
    assert (on.boundary_merges > 0) == (tokenizer_kind == "bpe")
    assert off.prefixes == off.cached == off.boundary_merges == off.fallbacks == 0
    assert off.requests == on.requests and off.tokens_run > on.tokens_run  # the prefix is run per row


def test_eval_item_contexts_rules():
    item = EvalItem("w", "en", "0", "P\n\n", "The cup fell off ", (" Then.", " Then."), 1,
                    contexts=("The cup fell off the table", "The cup fell off the shelf"))
    assert item.prompt(1) == "P\n\nThe cup fell off the shelf" and item.context_of(0) == "The cup fell off the table"
    assert item.prompts() == ("P\n\nThe cup fell off the table", "P\n\nThe cup fell off the shelf")
    plain = EvalItem("t", "en", "1", "P", "Q:", (" a", " b"), 0)  # positional fields unchanged; no contexts
    assert plain.contexts == () and plain.prompts() == ("PQ:", "PQ:")
    with pytest.raises(ValueError, match="1 contexts for 2 options"):
        EvalItem("w", "en", "2", "", "", (" x", " x"), 0, contexts=("a",))
    with pytest.raises(ValueError, match=r"contexts \[1\] do not start with the shared context"):
        EvalItem("w", "en", "3", "", "The ", (" x", " x"), 0, contexts=("The a", "A b"))


def test_rows_shared_by_one_token_options_and_duplicates(wl_tokenizers):
    tokenizer = wl_tokenizers["left"]
    model = build_model("bloom", len(tokenizer))
    items = make_items(DEMOS) * 3 + make_items("") * 2
    result = score_items_with_stats(model, tokenizer, items, batch_size=4)
    # one row per distinct item, less the empty-context ones (their input starts every row)
    assert result.stats.rows == 2 * (len(make_items("")) - 1)
    assert_scores_equal(result.scores, reference_scores(model, tokenizer, items, [tokenizer.bos_token_id]))


# --- dtypes, modes, side effects ------------------------------------------------------


def test_bf16_model_scores_close_to_fp32(wl_tokenizers):
    tokenizer = wl_tokenizers["right"]
    items = make_items(DEMOS)
    fp32 = score_items(build_model("llama", len(tokenizer)), tokenizer, items)
    bf16 = score_items(build_model("llama", len(tokenizer), dtype=torch.bfloat16), tokenizer, items)
    for a, b in zip(fp32, bf16):
        for x, y in zip(a, b):
            assert isinstance(y.logprob, float) and np.isfinite(y.logprob)
            assert abs(x.logprob - y.logprob) <= 0.05 * abs(x.logprob) + 0.5


def test_tokenizer_rng_and_train_mode_untouched():
    tokenizer = wordlevel_tokenizer("left")
    tokenizer.pad_token = None  # a tokenizer without pad token must stay without one
    model = build_model("gpt2", len(tokenizer))  # dropout 0.1: train mode would change scores
    model.train()
    model.transformer.h[0].eval()
    flags = {name: m.training for name, m in model.named_modules()}
    before = (tokenizer.padding_side, tokenizer.pad_token, tokenizer.pad_token_id, len(tokenizer),
              tokenizer.backend_tokenizer.to_str(), dict(tokenizer.init_kwargs))
    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)
    rng = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    items = make_items(DEMOS)
    got = score_items(model, tokenizer, items)
    assert torch.equal(torch.get_rng_state(), rng[0])
    assert random.getstate() == rng[1]
    assert np.array_equal(np.random.get_state()[1], rng[2])
    assert (tokenizer.padding_side, tokenizer.pad_token, tokenizer.pad_token_id, len(tokenizer),
            tokenizer.backend_tokenizer.to_str(), dict(tokenizer.init_kwargs)) == before
    assert {name: m.training for name, m in model.named_modules()} == flags
    model.eval()
    assert_scores_equal(got, reference_scores(model, tokenizer, items, [tokenizer.bos_token_id]))


def test_leading_tokens_rules():
    plain, own_bos = bytelevel_tokenizer(), bytelevel_tokenizer(template_bos=True)
    bos = plain.bos_token_id
    assert leading_tokens(plain, None) == [bos]  # adds nothing itself: prepend BOS
    assert leading_tokens(own_bos, None) == [bos]  # adds BOS itself: not doubled
    assert leading_tokens(plain, True) == [bos] and leading_tokens(own_bos, True) == [bos]
    assert leading_tokens(plain, False) == [] and leading_tokens(own_bos, False) == []
    eos = plain.eos_token_id
    xglm_like = bytelevel_tokenizer()
    xglm_like.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="</s> $A", pair="</s> $A </s> $B", special_tokens=[("</s>", eos)])
    assert leading_tokens(xglm_like, None) == [eos]  # its own leading </s>, no BOS added
    eos_after = bytelevel_tokenizer()
    eos_after.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos)])
    assert leading_tokens(eos_after, None) == []  # trailing EOS dropped; it adds a token itself


def test_too_long_is_an_error_not_a_cut(wl_tokenizers):
    tokenizer = wl_tokenizers["right"]
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=16, n_embd=16, n_layer=1, n_head=2))
    with pytest.raises(ValueError, match="exceed the model's 16 positions"):
        score_items(model, tokenizer, make_items(DEMOS))


def test_choose_normalizations_and_ties():
    scores = [OptionScore(-4.0, 2, 8, False), OptionScore(-3.0, 3, 2, False), OptionScore(-3.0, 1, 2, True)]
    assert choose(scores, "none") == 1  # tie -> first maximum, as numpy.argmax
    assert choose(scores, "token") == 1  # -2.0, -1.0, -3.0
    assert choose(scores, "char") == 0  # -0.5, -1.5, -1.5
    assert normalized(scores, "token") == [-2.0, -1.0, -3.0]
    with pytest.raises(ValueError, match="Did you mean 'token'"):
        choose(scores, "tokens")


# --- records --------------------------------------------------------------------------


def test_records_round_trip_and_rescore(tmp_path, wl_tokenizers):
    tokenizer = wl_tokenizers["right"]
    model = build_model("llama", len(tokenizer))
    items = make_items(DEMOS) + make_items("", task="z") + winograd_items(DEMOS)
    items.append(EvalItem("w", "en", "same-contexts", DEMOS, "Question: is it?", (" yes", " no"), 0,
                          contexts=("Question: is it?", "Question: is it?")))
    scores = score_items(model, tokenizer, items, batch_size=4)
    path = write_records(tmp_path / "out" / "records.jsonl", items, scores)
    first = path.read_bytes()
    write_records(path, items, scores)
    assert path.read_bytes() == first  # deterministic
    records = read_records(path)
    assert [r["idx"] for r in records] == [it.idx for it in items]
    assert list(json.loads(first.splitlines()[0])) == sorted(json.loads(first.splitlines()[0]))
    for item, record in zip(items, records):
        assert record["prompt"] == item.prefix + item.context
        # "prompts" only where the options' prompts differ: one per option, prefix included
        assert ("prompts" in record) == (len(set(item.prompts())) > 1 or item.prompts()[0] != record["prompt"])
        if "prompts" in record:
            assert record["prompts"] == list(item.prompts())
        assert record_prompts(record) == list(item.prompts())
        # every score can be recomputed from the record alone
        for prompt, option, logprob in zip(record_prompts(record), record["options"], record["logprob"]):
            ref = reference_option(model, tokenizer, prompt, option, [tokenizer.bos_token_id])
            assert abs(ref.logprob - logprob) <= 1e-4
    assert sum("prompts" in r for r in records) == len(WINOGRAD)
    for norm in ("none", "token", "char"):
        want = np.mean([choose(s, norm) == it.gold for it, s in zip(items, scores)])
        assert accuracy_from_records(records, norm) == pytest.approx(want)
        assert [r["pred"][norm] for r in records] == [choose(s, norm) for s in scores]


# --- parity with lm-evaluation-harness ------------------------------------------------


@pytest.mark.parametrize("template_bos", [False, True], ids=["no-bos", "tokenizer-bos"])
def test_parity_with_lm_eval_hflm(template_bos, capsys):
    pytest.importorskip("accelerate")
    huggingface = pytest.importorskip("lm_eval.models.huggingface")
    from lm_eval.api.instance import Instance

    tokenizer = bytelevel_tokenizer(template_bos=template_bos)
    # lm-eval's default uses the tokenizer's own special tokens: that is add_bos=None when the
    # tokenizer adds BOS, and add_bos=False when it adds nothing
    add_bos = None if template_bos else False
    model = build_model("llama", len(tokenizer))
    hflm = huggingface.HFLM(pretrained=model, tokenizer=tokenizer, batch_size=16, device="cpu")
    for shots, prefix in (("0-shot", ""), ("2-shot", DEMOS)):
        # per-option contexts: lm-eval's multiple-input requests (prefix + contexts[j], continuation)
        items = (make_items(prefix) + winograd_items(prefix)) * 4
        requests = [Instance("loglikelihood", {}, (it.prompt(i), o), i)
                    for it in items for i, o in enumerate(it.options)]
        start = time.perf_counter()
        theirs = hflm.loglikelihood(requests, disable_tqdm=True)
        t_theirs = time.perf_counter() - start
        start = time.perf_counter()
        ours = score_items(model, tokenizer, items, batch_size=16, add_bos=add_bos)
        t_ours = time.perf_counter() - start
        flat = [s for item_scores in ours for s in item_scores]
        diffs = [abs(s.logprob - ll) for s, (ll, _) in zip(flat, theirs)]
        assert len(flat) == len(theirs) and max(diffs) <= 1e-4
        assert [s.is_greedy for s in flat] == [g for _, g in theirs]
        k = 0
        for item_scores in ours:
            lls = [ll for ll, _ in theirs[k: k + len(item_scores)]]
            k += len(item_scores)
            assert choose(item_scores, "none") == int(np.argmax(lls))
        with capsys.disabled():
            print(f"\n[lm-eval parity {shots} tokenizer-bos={template_bos}] {len(flat)} requests, "
                  f"max |diff| {max(diffs):.2e}, ours {t_ours * 1e3:.1f} ms, HFLM {t_theirs * 1e3:.1f} ms")
