"""Log-likelihood scoring of multiple-choice items, with the shared prefix encoded once.

For option j of an item the scored text is ``prompt_j + options[j]`` with
``prompt_j = item.prompt(j) = prefix + context_j``; ``context_j`` is the item's ``context``,
or its own ``contexts[j]`` when the item has per-option contexts (lm-eval's "multiple
input" mode: Winogrande, XWinograd). The score is the log-probability of the option's
tokens given everything before them. This is lm-evaluation-harness's ``loglikelihood``
over the request ``(prompt_j, options[j])`` (in multiple-input mode lm-eval's requests are
``(prefix + contexts[j], target_delimiter + target)``, which is the same with
``options[j]`` = the shared continuation), with the same tokenisation (0.4.13, ``HFLM`` /
``TemplateLM._encode_pair``), and one change that only affects speed: the prefix (template
header + k demonstrations) is run through the model once per distinct prefix string and
its KV cache is reused by every item and option that shares it, whatever the option's
context. The released AFP code recomputed a 5-shot prefix for every option.
``reuse_prefix=False`` turns the cache off: every request is run from scratch, prefix
tokens included in its row, with the same scores (for benchmarks/icl_scoring.py).

The LM head runs only at the positions whose log-probabilities are read: the last context
position and the option's tokens but the last, per row (``xalign.model.forward.logits_at``:
the model's own head and output processing, e.g. Gemma's final logit softcapping, on those
positions). With a 262k vocabulary the head costs more per position than all the blocks of
a 270M model, and a (batch, seq, vocab) float32 tensor is never made. The scores are the
same as from full logits (the same head on the same hidden states; tests check it within
1e-5); ``full_vocab=True`` computes the logits at every position as before, only to measure
the difference (benchmarks/icl_scoring.py).

Tokenisation (lm-eval 0.4.13 rules; ``enc`` = tokenizer without special tokens)
-------------------------------------------------------------------------------
- Every rule applies to each (prompt_j, option) request on its own. Trailing whitespace
  of the prompt (``str.rstrip``: spaces and newlines) moves to the continuation:
  ``ctx = prompt_j.rstrip()``, ``cont = prompt_j[len(ctx):] + option``.
- ``whole = lead + enc(ctx + cont)``, ``ctx_ids = lead + enc(ctx)``, and the option's
  tokens are ``whole[len(ctx_ids):]``. The model reads ``ctx_ids + option_tokens``, exactly
  as lm-eval does (when a BPE merge crosses the split, that is not ``whole``).
- ``lead`` (the only special tokens ever added) follows ``add_bos``:
  ``None`` (default, xalign's training convention, ``xalign.data.batches.encode``): the
  leading special tokens the tokenizer adds itself (Llama's ``<s>``, XGLM's ``</s>``), or
  ``[bos]`` when it adds none and has a BOS; trailing ones (an appended EOS) are dropped.
  ``True``: ``[bos]`` (error if the tokenizer has no BOS). ``False``: nothing.
  lm-eval's default (``add_bos_token=None``) is the tokenizer's own special tokens, so it
  equals ``add_bos=None`` for tokenizers that add a BOS and ``add_bos=False`` for
  tokenizers that add nothing.
- Empty context (``prompt_j`` is ``""``, or only whitespace, and ``lead`` is empty): like
  lm-eval, the context is the prefix token (BOS, else EOS), unless the option's first
  token is that token, in which case that first token is the context. With a non-empty
  ``lead``, ``lead`` is the context.
- No truncation: a sequence longer than the model's position table is an error (lm-eval
  cuts from the left; a silently cut prompt changes the result).

The cached prefix
-----------------
``prefix_ids = lead + enc(prefix)``. The prefix is common to every option of every item of
an evaluation, per-option contexts included, so each request is matched against it on its
own tokens: a request shares its first ``shared`` tokens with ``prefix_ids`` (at most its
context length: the last context position must be computed to predict the option's first
token). Usually ``shared == len(prefix_ids)``. When a merge crosses the
prefix/context boundary it is shorter: byte-level BPE (GPT-2, BLOOM, Llama-3, Qwen) ends
a string on the token "\n\n" but splits "\n\n" before text into "\n", "\n", so a prefix
ending in lm-eval's default few-shot delimiter "\n\n" never matches exactly; "the ca" +
"t" is another case, and so is a prefix whose trailing whitespace the split moves to the
option (empty context). Such requests (``ScoringStats.boundary_merges``) use the prefix cache
cropped to the shared tokens, with the same result as a full forward. A request that
shares no token with its prefix (no BOS and a merge at the first token) is scored from
scratch and counted in ``ScoringStats.fallbacks``.

Per distinct prefix the model runs once over ``prefix_ids[:longest shared]`` with
``use_cache=True``; the log-probabilities at the last position of each cache length in use
are kept for requests whose context is exactly the cached part. For each batch the cache
is deep-copied, cropped (``Cache.crop`` with a negative count: transformers 5.x rejects a
positive one) and repeated along the batch dimension (``Cache.batch_repeat_interleave``).
The stored cache itself is never given to a forward: transformers 5.x
``DynamicLayer.update`` replaces the layer's tensors by ``torch.cat([old, new])``, so a
forward grows the cache object it receives.

Batching and positions
----------------------
Rows are grouped by cache (prefix and shared length; one group for uncached requests),
sorted longest first, batched, and the groups run longest first so an out-of-memory
error comes on the first batch; results go back in input order. The scorer
pads on the right with a local filler id (the pad id, else EOS, else 0) and its own
attention mask: the tokenizer is never changed (no pad token set, ``padding_side``
ignored), unlike the released evaluation (method.md, defect 5). ``position_ids`` continue
after the cached prefix (``prefix_len + 0, 1, ...``) and are passed to models whose forward
takes them; ALiBi models (BLOOM) take none and derive positions from the attention mask.

A request needs the logits over its tokens less the last; in a causal model these are the
same inside any longer sequence that starts with them, so such requests share that
sequence's row (``ScoringStats.rows``): one-token options of one item share a row, as in
lm-eval's one-token-continuation cache, and so do duplicated items. Options with their own
contexts differ before the option, so they share a row only when one whole input starts
another.

Everything runs under ``torch.inference_mode`` with the model in eval mode; each module's
train/eval flag is restored afterwards. No random numbers are drawn and no seed is set.
Log-softmax is taken in float32 whatever the model's dtype.

Length normalisation (``choose``)
---------------------------------
``"none"``: summed log-probability (the paper's rule, lm-eval ``acc``). ``"token"``: per
option token. ``"char"``: per character of the option string (``len(str)``, Unicode code
points, as lm-eval's ``acc_norm``, which divides by ``len(choice)``; its choices exclude
the target delimiter " " that xalign's options include; lm-eval's ``acc_bytes`` divides
by UTF-8 bytes instead). With per-option contexts the option string is the shared
continuation, so ``n_chars`` is the same for every option and "char" ranks as "none"
(lm-eval's ``acc_norm`` divides by the length of its "choices", which in multiple-input
mode are the contexts; XWinograd reports ``acc`` only). Ties go to the first maximum
(``numpy.argmax``, as lm-eval).
"""

from __future__ import annotations

import copy
import inspect
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from xalign.eval.items import EvalItem, OptionScore
from xalign.model.forward import logits_at
from xalign.suggest import unknown

NORMALIZATIONS = ("none", "token", "char")


@dataclass
class ScoringStats:
    """What one ``score_items_with_stats`` call did (for logs and tests)."""

    requests: int = 0  # (item, option) pairs scored: (prompt(j), options[j]) requests
    prefixes: int = 0  # distinct prefixes run once with use_cache=True
    prefix_tokens: int = 0  # tokens of those prefix forwards, in total
    cached: int = 0  # requests scored on top of a cached prefix (whole or in part)
    boundary_merges: int = 0  # of those, requests whose tokens leave the prefix's tokens
    #                           before its end: they use the cache cropped to the shared part
    fallbacks: int = 0  # requests with a prefix that share no token with it: no cache
    rows: int = 0  # distinct sequences run: requests whose tokens (less the last) are a
    #                prefix of another's share its row (lm-eval does this for one-token options)
    batches: int = 0  # batched forwards over the rows (prefix forwards not counted)
    tokens_run: int = 0  # non-pad tokens fed to the model, prefix forwards included


@dataclass
class ScoringResult:
    scores: list[list[OptionScore]]  # one list per item, one score per option
    stats: ScoringStats = field(default_factory=ScoringStats)


@dataclass
class _Row:
    tokens: tuple[int, ...]  # the sequence the model reads for all of ``requests``
    requests: list["_Request"]


@dataclass(frozen=True)
class _Request:
    item: int
    option: int
    tokens: tuple[int, ...]  # what the model reads: context tokens + option tokens
    n_context: int  # the option's tokens are tokens[n_context:]
    n_chars: int


def score_items(
    model: nn.Module,
    tokenizer,
    items: Sequence[EvalItem],
    *,
    batch_size: int = 16,
    add_bos: bool | None = None,
    reuse_prefix: bool = True,
    full_vocab: bool = False,
    progress: Callable[[int], None] | None = None,
) -> list[list[OptionScore]]:
    """One ``OptionScore`` per option of every item, in input order (see module doc).
    ``reuse_prefix=False`` scores every request from scratch, ``full_vocab=True`` runs the LM
    head at every position (same scores, slower: for benchmarks). ``progress(n)`` is called
    after each batch with the number of items whose every option is now scored."""
    return score_items_with_stats(
        model, tokenizer, items, batch_size=batch_size, add_bos=add_bos, reuse_prefix=reuse_prefix,
        full_vocab=full_vocab, progress=progress,
    ).scores


def score_items_with_stats(
    model: nn.Module,
    tokenizer,
    items: Sequence[EvalItem],
    *,
    batch_size: int = 16,
    add_bos: bool | None = None,
    reuse_prefix: bool = True,
    full_vocab: bool = False,
    progress: Callable[[int], None] | None = None,
) -> ScoringResult:
    """``score_items`` plus the ``ScoringStats`` of the call (fallbacks, prefix forwards).

    ``reuse_prefix=False``: no prefix cache; every request's row holds all its tokens,
    prefix included (batching and row sharing unchanged). The scores are the same; it
    exists to measure what the prefix cache saves (benchmarks/icl_scoring.py)."""
    if batch_size < 1:
        raise ValueError(f"batch_size >= 1 must hold, got batch_size={batch_size}")
    items = list(items)
    stats = ScoringStats()
    lead = leading_tokens(tokenizer, add_bos)
    encode = _Encoder(tokenizer, items)
    requests = [
        request
        for i, item in enumerate(items)
        for request in _item_requests(i, item, encode, lead, _prefix_token(tokenizer))
    ]
    stats.requests = len(requests)
    _check_lengths(model, items, requests)

    # one cache per distinct prefix, shared by every option of its items (own contexts or not)
    prefix_ids = {item.prefix: tuple(lead) + encode(item.prefix) for item in items if item.prefix and reuse_prefix}
    plan = _plan(items, requests, prefix_ids, stats)

    results: list[list[OptionScore | None]] = [[None] * len(item.options) for item in items]
    pad_id = _pad_id(tokenizer)
    left = [len(item.options) for item in items]  # options not yet scored, per item (for progress)
    done = 0
    with _evaluation(model):
        for prefix, groups in plan:
            cache = None
            if prefix:
                cache = _PrefixCache.run(model, prefix_ids[prefix], [shared for shared, _ in groups], stats,
                                         full_vocab)
            for shared, rows in groups:
                for start in range(0, len(rows), batch_size):
                    batch = rows[start : start + batch_size]
                    for request, score in _score_batch(model, batch, cache, shared, pad_id, stats, full_vocab):
                        results[request.item][request.option] = score
                        stats.cached += cache is not None
                        left[request.item] -= 1
                        done += left[request.item] == 0
                    if progress is not None and done:
                        progress(done)
                        done = 0
            del cache  # one prefix cache alive at a time
    return ScoringResult(scores=results, stats=stats)  # type: ignore[arg-type]


def _plan(items, requests, prefix_ids, stats) -> list[tuple[str, list[tuple[int, list["_Row"]]]]]:
    """[(prefix, [(shared, rows)])]: the requests grouped by the prefix cache they run on and
    the number of its tokens they share ("" and 0: from scratch), as rows, all longest
    first: the first batch is the longest of all, so an out-of-memory error comes first."""
    blocks: dict[str, dict[int, list[_Request]]] = {}
    for request in requests:
        prefix = items[request.item].prefix
        ids = prefix_ids.get(prefix, ())
        shared = _shared_length(ids, request.tokens, request.n_context)
        if prefix and shared < len(ids):
            if shared:
                stats.boundary_merges += 1
            else:
                stats.fallbacks += 1
        blocks.setdefault(prefix if shared else "", {}).setdefault(shared, []).append(request)
    plan = []
    for prefix, block in blocks.items():
        groups = sorted(((shared, _rows(group)) for shared, group in block.items()), key=lambda g: -len(g[1][0].tokens))
        plan.append((prefix, groups))
        stats.rows += sum(len(rows) for _, rows in groups)
    plan.sort(key=lambda p: -len(p[1][0][1][0].tokens))
    return plan


def leading_tokens(tokenizer, add_bos: bool | None = None) -> list[int]:
    """The special tokens put before every sequence (module doc, ``add_bos``)."""
    bos = tokenizer.bos_token_id
    if add_bos is False:
        return []
    if add_bos is True:
        if bos is None:
            raise ValueError(f"add_bos=True needs a tokenizer with a BOS token; {type(tokenizer).__name__} has none")
        return [bos]
    if add_bos is not None:
        raise ValueError(f"add_bos must be None, True or False, got {add_bos!r}")
    probe = "a b"
    own = tokenizer(probe, add_special_tokens=True)["input_ids"]
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    if own == plain:
        return [bos] if bos is not None else []
    for start in range(len(own) - len(plain) + 1):
        if own[start : start + len(plain)] == plain:
            return list(own[:start])
    return []


def split_request(prompt: str, option: str) -> tuple[str, str]:
    """lm-eval's split: trailing whitespace of the prompt moves to the continuation."""
    context = prompt.rstrip()
    return context, prompt[len(context) :] + option


def normalized(scores: Sequence[OptionScore], normalization: str = "none") -> list[float]:
    """The values ``choose`` takes the argmax of."""
    check_normalization(normalization)
    if normalization == "none":
        return [s.logprob for s in scores]
    if normalization == "token":
        return [s.logprob / s.n_tokens for s in scores]
    with np.errstate(divide="ignore", invalid="ignore"):
        return [float(np.float64(s.logprob) / s.n_chars) for s in scores]


def choose(scores: Sequence[OptionScore], normalization: str = "none") -> int:
    """Index of the predicted option: the first maximum, as lm-eval (``numpy.argmax``)."""
    if not scores:
        raise ValueError("cannot choose among zero options")
    return int(np.argmax(np.asarray(normalized(scores, normalization), dtype=np.float64)))


def check_normalization(normalization: str) -> None:
    if normalization not in NORMALIZATIONS:
        raise ValueError(unknown("normalization", normalization, NORMALIZATIONS))


# --- tokenisation ---------------------------------------------------------------------


class _Encoder:
    """``enc(s)``: token ids without special tokens, each distinct string encoded once
    (all of them in one batched tokenizer call)."""

    def __init__(self, tokenizer, items: Sequence[EvalItem]):
        strings = set()
        for item in items:
            strings.add(item.prefix)
            for j, option in enumerate(item.options):
                context, continuation = split_request(item.prompt(j), option)
                strings.add(context)
                strings.add(context + continuation)
        ordered = sorted(strings)
        ids = tokenizer(ordered, add_special_tokens=False)["input_ids"] if ordered else []
        self._ids = {s: tuple(i) for s, i in zip(ordered, ids)}

    def __call__(self, string: str) -> tuple[int, ...]:
        return self._ids[string]


def _prefix_token(tokenizer) -> int | None:
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def _item_requests(index: int, item: EvalItem, encode: _Encoder, lead: list[int], prefix_token) -> Iterator[_Request]:
    if not item.options:
        raise ValueError(f"item {item.task}/{item.lang}/{item.idx} has no options")
    for j, option in enumerate(item.options):
        context, continuation = split_request(item.prompt(j), option)  # the option's own prompt
        if context or lead:
            context_ids = tuple(lead) + encode(context)
            option_ids = (tuple(lead) + encode(context + continuation))[len(context_ids) :]
        else:  # empty context: lm-eval's prefix token (BOS, else EOS) is the context
            option_ids = encode(continuation)
            if prefix_token is None:
                raise ValueError(
                    f"item {item.task}/{item.lang}/{item.idx}: empty context and the tokenizer has neither "
                    "BOS nor EOS to condition on"
                )
            if option_ids and option_ids[0] == prefix_token:
                context_ids, option_ids = option_ids[:1], option_ids[1:]
            else:
                context_ids = (prefix_token,)
        if not option_ids:
            raise ValueError(
                f"item {item.task}/{item.lang}/{item.idx} option {j} ({option!r}) has no tokens of its own "
                "after the context split"
            )
        yield _Request(index, j, context_ids + option_ids, len(context_ids), len(option))


def _check_lengths(model: nn.Module, items: Sequence[EvalItem], requests: Sequence[_Request]) -> None:
    config = getattr(model, "config", None)
    limit = None
    for name in ("max_position_embeddings", "n_positions"):
        limit = limit or getattr(config, name, None)
    if not limit:
        return
    too_long = [r for r in requests if len(r.tokens) - 1 > limit]  # the last token is never read
    if too_long:
        first = items[too_long[0].item]
        raise ValueError(
            f"{len(too_long)} request(s) exceed the model's {limit} positions (first: item "
            f"{first.task}/{first.lang}/{first.idx}, {len(too_long[0].tokens) - 1} tokens to read); shorten the prompt "
            "(fewer shots) rather than cut it"
        )


def _pad_id(tokenizer) -> int:
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    return 0


# --- the model ------------------------------------------------------------------------


@contextmanager
def _evaluation(model: nn.Module):
    """Eval mode + inference mode; every module's own train flag restored afterwards."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        for module, training in flags:
            module.training = training


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _takes_positions(model: nn.Module) -> bool:
    return "position_ids" in inspect.signature(model.forward).parameters


def _cache_argument(model: nn.Module) -> str:
    """The forward's name for the KV cache: ``cache`` from transformers 5.2x on (which
    warns that ``past_key_values`` goes in 5.40), ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _cache_of(output):
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def _forward(model: nn.Module, input_ids, attention_mask, start: int, past=None):
    """One forward; ``position_ids`` start at ``start`` (the cached length) when the model
    takes them. Right padding, so every row's positions are start, start + 1, ..."""
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": past is not None}
    if past is not None:
        inputs[_cache_argument(model)] = past
    if _takes_positions(model):
        length = input_ids.shape[1]
        positions = torch.arange(start, start + length, device=input_ids.device)
        inputs["position_ids"] = positions.unsqueeze(0).expand(input_ids.shape[0], length)
    return model(**inputs)


def _shared_length(prefix_ids: Sequence[int], tokens: Sequence[int], n_context: int) -> int:
    """How many leading tokens a request shares with its prefix's tokens, at most its
    context length (the last context position must be computed to predict the option)."""
    limit = min(len(prefix_ids), n_context)
    shared = 0
    while shared < limit and prefix_ids[shared] == tokens[shared]:
        shared += 1
    return shared


@dataclass
class _PrefixCache:
    past: object  # the model's cache of the prefix tokens (a transformers Cache), batch 1
    length: int  # tokens in ``past``
    last_logprobs: dict[int, torch.Tensor]  # cache length -> float32 log-softmax at its last position

    @classmethod
    def run(cls, model: nn.Module, ids: Sequence[int], lengths: Sequence[int], stats: ScoringStats,
            full_vocab: bool = False) -> _PrefixCache:
        """One forward over ``ids[:max(lengths)]``, kept for caches of every length in ``lengths``;
        the LM head runs at the last position of each of those lengths only."""
        ids = list(ids[: max(lengths)])
        device = _device(model)
        input_ids = torch.tensor([ids], dtype=torch.long, device=device)
        inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "use_cache": True}
        if _takes_positions(model):
            inputs["position_ids"] = torch.arange(len(ids), device=device).unsqueeze(0)
        wanted = sorted(set(lengths))
        rows = torch.zeros(len(wanted), dtype=torch.long, device=device)
        positions = torch.tensor([n - 1 for n in wanted], dtype=torch.long, device=device)
        with _reading(model, rows, positions, full_vocab) as picked:
            out = model(**inputs)
            logprobs = picked(out.logits).float().log_softmax(-1)
        stats.prefixes += 1
        stats.prefix_tokens += len(ids)
        stats.tokens_run += len(ids)
        return cls(_cache_of(out), len(ids), {n: logprobs[k] for k, n in enumerate(wanted)})

    def for_batch(self, batch: int, length: int):
        """A fresh copy of the first ``length`` cached tokens with ``batch`` rows. The stored
        cache is never passed to a forward: a forward grows the cache it is given."""
        past = self.past
        if isinstance(past, tuple):  # legacy tuple-of-tuples caches (remote code)
            return tuple(tuple(t[:, :, :length].expand(batch, -1, -1, -1) for t in layer) for layer in past)
        past = copy.deepcopy(past)
        if length < self.length:
            past.crop(length - self.length)  # a negative count removes tokens (4.x and 5.x)
        past.batch_repeat_interleave(batch)
        return past


def _rows(group: Sequence[_Request]) -> list[_Row]:
    """One row per distinct sequence, longest first. A request needs the logits of
    ``tokens[:-1]`` only, and in a causal model those are the same in any longer sequence
    that starts with them: such a request rides on that sequence's row. In lexicographic
    order the sequences that extend A directly follow A, so one backward pass finds them."""
    by_input: dict[tuple[int, ...], list[_Request]] = {}
    for request in group:
        by_input.setdefault(request.tokens[:-1], []).append(request)
    rows: list[_Row] = []
    for tokens in sorted(by_input, reverse=True):
        if rows and rows[-1].tokens[: len(tokens)] == tokens:
            rows[-1].requests.extend(by_input[tokens])
        else:
            rows.append(_Row(tokens, list(by_input[tokens])))
    rows.sort(key=lambda row: (-len(row.tokens), row.tokens))
    return rows


@contextmanager
def _reading(model: nn.Module, rows: torch.Tensor, positions: torch.Tensor, full_vocab: bool):
    """``picked(logits)`` -> the (K, vocab) logits at (rows[k], positions[k]): the LM head run
    there only (``logits_at``), or at every position with ``full_vocab`` (the old way)."""
    if full_vocab:
        yield lambda logits: logits[rows, positions]
    else:
        with logits_at(model, rows, positions) as picked:
            yield picked


def _read_span(row: _Row, start: int) -> tuple[int, int]:
    """[lo, hi): the row positions whose logits its requests read, relative to ``start`` (the
    logits at position t predict token t + 1); lo = -1 is the cached prefix's last position."""
    lo = min(r.n_context for r in row.requests) - 1 - start
    hi = max(len(r.tokens) for r in row.requests) - 1 - start  # exclusive
    return lo, hi


def _score_batch(model, batch: Sequence[_Row], cache: _PrefixCache | None, start: int, pad_id: int, stats,
                 full_vocab: bool = False):
    """(request, score) for every request of ``batch``, run on top of the first ``start``
    tokens of ``cache`` (no cache: from scratch). The LM head runs at the read positions only."""
    suffixes = [row.tokens[start:] for row in batch]
    width = max(len(s) for s in suffixes)
    spans = [_read_span(row, start) for row in batch]
    logits = None
    if width:  # zero only for a lone row equal to the cached part: its last logits suffice
        device = _device(model)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), start + width), dtype=torch.long)
        attention_mask[:, :start] = 1
        for i, suffix in enumerate(suffixes):
            input_ids[i, : len(suffix)] = torch.tensor(suffix, dtype=torch.long)
            attention_mask[i, start : start + len(suffix)] = 1
        past = cache.for_batch(len(batch), start) if cache is not None else None
        rows = torch.tensor([i for i, (lo, hi) in enumerate(spans) for _ in range(max(lo, 0), hi)], dtype=torch.long)
        positions = torch.tensor([t for lo, hi in spans for t in range(max(lo, 0), hi)], dtype=torch.long)
        with _reading(model, rows.to(device), positions.to(device), full_vocab) as picked:
            logits = picked(_forward(model, input_ids.to(device), attention_mask.to(device), start, past).logits)
        stats.batches += 1
        stats.tokens_run += sum(len(s) for s in suffixes)

    offset = 0  # rows of ``logits``: the read positions of the batch's rows, one row after another
    for row, (lo, hi) in zip(batch, spans):
        parts = [cache.last_logprobs[start].unsqueeze(0)] if lo < 0 else []  # position start - 1
        if hi > max(lo, 0):
            count = hi - max(lo, 0)
            parts.append(logits[offset : offset + count].float().log_softmax(-1))
            offset += count
        logprobs = torch.cat(parts) if len(parts) > 1 else parts[0]  # positions lo .. hi - 1
        for request in row.requests:
            first = request.n_context - 1 - start - lo
            target = torch.tensor(request.tokens[request.n_context :], dtype=torch.long, device=logprobs.device)
            span = logprobs[first : first + len(target)]
            picked = span.gather(-1, target.unsqueeze(-1)).squeeze(-1)
            yield request, OptionScore(
                logprob=float(picked.sum()),
                n_tokens=len(target),
                n_chars=request.n_chars,
                is_greedy=bool((span.argmax(-1) == target).all()),
            )
