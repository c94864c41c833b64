"""Collation: language-model examples (prompt + response, labels), padding, packing, and
the position ids a padded or packed row needs.

Label convention (HF's): ``labels`` is aligned with ``input_ids`` and -100 marks tokens
that are not predicted (prompt and padding); ``xalign.objectives.lm.lm_loss`` does the
shift, so logits at t are scored against labels at t + 1.

Packing puts several examples in one row without letting them see each other: every
example restarts ``position_ids`` at 0, and the 4D mask is causal AND block-diagonal
(``segment_ids`` say which example a token belongs to). transformers 5.x passes a 4D
``attention_mask`` through to attention unchanged; it must then be an additive float mask
in the model's dtype (0 = attend, dtype min = blocked), which works for both the "sdpa" and
the "eager" attention implementations (a bool mask would be ADDED as 0/1 by "eager").
No token is ever dropped: an example that does not fit in the current row starts a new one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
IGNORE_INDEX = -100


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only: 0 at each row's first non-pad token.

    Pass these as ``position_ids`` so that a left-padded row gets the same positions (and so
    the same hidden states) as the unpadded sequence. transformers 5.x uses 0..seq-1 when
    position_ids is omitted, which shifts left-padded rows in models with absolute position
    embeddings (GPT-2, XGLM, OPT). Pad positions get 0; they are masked anyway.
    """
    mask = attention_mask.long()
    return (mask.cumsum(dim=-1) - 1).clamp(min=0)


def build_lm_example(
    prompt_ids: Sequence[int],
    response_ids: Sequence[int],
    *,
    max_length: int,
    eos_id: int,
    truncate_prompt: bool = False,
) -> dict:
    """input_ids = prompt + response + [eos]; labels = -100 on the prompt, the rest as is.

    A sample longer than ``max_length`` is an error, unless ``truncate_prompt``: then
    tokens are cut from the START of the prompt (its end, e.g. "Answer in German:", is
    kept) and the count is returned as ``prompt_truncated``. The response is never cut.
    The prompt must keep at least one token: the first response token needs a context.
    """
    prompt, response = list(prompt_ids), list(response_ids) + [eos_id]
    if not prompt:
        raise ValueError("prompt_ids is empty: the first response token would have no context; prepend BOS")
    excess = len(prompt) + len(response) - max_length
    cut = 0
    if excess > 0:
        if not truncate_prompt or excess >= len(prompt):
            raise ValueError(
                f"example has {len(prompt)} prompt + {len(response)} response tokens (with EOS) "
                f"> max_length={max_length}"
                + ("" if truncate_prompt else "; pass truncate_prompt=True to cut the prompt's start")
                + (" and the response alone does not fit" if excess >= len(prompt) else "")
            )
        cut = excess
        prompt = prompt[cut:]
    return {
        "input_ids": prompt + response,
        "labels": [IGNORE_INDEX] * len(prompt) + response,
        "prompt_truncated": cut,
    }


def collate_lm(examples: Sequence[dict], pad_id: int, *, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Pad examples (from ``build_lm_example``) to the longest; one example per row.

    Returns input_ids, labels (-100 on pads), attention_mask and position_ids (counted over
    real tokens, so left padding gives the same positions as right padding).
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if not examples:
        raise ValueError("collate_lm got no examples")
    width = max(len(ex["input_ids"]) for ex in examples)
    rows = {"input_ids": [], "labels": [], "attention_mask": []}
    for ex in examples:
        n = len(ex["input_ids"])
        if len(ex["labels"]) != n:
            raise ValueError(f"an example has {n} input_ids but {len(ex['labels'])} labels")
        pad = width - n
        for key, values, fill in (
            ("input_ids", list(ex["input_ids"]), pad_id),
            ("labels", list(ex["labels"]), IGNORE_INDEX),
            ("attention_mask", [1] * n, 0),
        ):
            rows[key].append([fill] * pad + values if padding_side == "left" else values + [fill] * pad)
    batch = {key: torch.tensor(value, dtype=torch.long) for key, value in rows.items()}
    batch["position_ids"] = position_ids_from_mask(batch["attention_mask"])
    return batch


def packed_attention_mask(segment_ids: torch.Tensor, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Additive (batch, 1, seq, seq) mask: token q sees token k iff k <= q and same segment."""
    seq = segment_ids.shape[-1]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=segment_ids.device).tril()
    allowed = causal & (segment_ids[:, :, None] == segment_ids[:, None, :])
    blocked = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=segment_ids.device)
    return torch.where(allowed, torch.zeros((), dtype=dtype, device=segment_ids.device), blocked)[:, None]


def pack_examples(examples: Sequence[dict], max_length: int, *, pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Pack examples, in order, into rows of ``max_length`` tokens.

    An example goes in the current row if it fits, else it starts a new row; an example
    longer than ``max_length`` is an error (build it with ``build_lm_example``). Returns
    input_ids, labels, position_ids (restarting at 0 per example), segment_ids (0, 1, ...
    per example in a row; the padding tail is one more segment, with -100 labels) and
    attention_mask, the 4D float32 mask of ``packed_attention_mask`` (cast it to the
    model's dtype; ``alignment_loss`` does).
    """
    rows: list[list[dict]] = []
    used = max_length
    for i, ex in enumerate(examples):
        n = len(ex["input_ids"])
        if n > max_length:
            raise ValueError(f"example {i} has {n} tokens > max_length={max_length}; it cannot be packed")
        if len(ex["labels"]) != n:
            raise ValueError(f"example {i} has {n} input_ids but {len(ex['labels'])} labels")
        if used + n > max_length:
            rows.append([])
            used = 0
        rows[-1].append(ex)
        used += n
    if not rows:
        raise ValueError("pack_examples got no examples")
    out = {key: [] for key in ("input_ids", "labels", "position_ids", "segment_ids")}
    for row in rows:
        ids, labels, positions, segments = [], [], [], []
        for segment, ex in enumerate(row):
            n = len(ex["input_ids"])
            ids += list(ex["input_ids"])
            # the first token of an example is never a target (nothing precedes it in its
            # own sequence, as in an unpacked row); this stops a cross-example prediction
            labels += [IGNORE_INDEX] + list(ex["labels"])[1:]
            positions += range(n)
            segments += [segment] * n
        pad = max_length - len(ids)
        ids += [pad_id] * pad
        labels += [IGNORE_INDEX] * pad
        positions += range(pad)
        segments += [len(row)] * pad
        for key, value in zip(out, (ids, labels, positions, segments)):
            out[key].append(value)
    batch = {key: torch.tensor(value, dtype=torch.long) for key, value in out.items()}
    batch["attention_mask"] = packed_attention_mask(batch["segment_ids"])
    return batch
