"""Representation metrics on held-out parallel sentences, from ONE batched pass over every
language (all layers' hidden states kept as pooled vectors):

- bitext retrieval top-1 against the pivot: for each pivot sentence i, is its nearest
  sentence (cosine) in language l the translation l_i?  ``align/retrieval/<lang>/top1``;
- a MEXA-style alignment score (arXiv 2410.05873) per language and layer: the share of i
  for which cos(pivot_i, l_i) is strictly the largest in both its row and its column of the
  N x N cosine matrix. ``align/mexa/<lang>`` at the run's layer, ``.../layer<k>`` for all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from xalign.data.batches import encode
from xalign.model.forward import hidden_states_forward
from xalign.model.pooling import get_pooler


@dataclass
class Embeddings:
    """vectors[lang] is a (num_layers + 1, N, hidden) float32 tensor; row i of every
    language is the same meaning."""

    vectors: dict[str, torch.Tensor]


@torch.no_grad()
def embed_parallel(model, tokenizer, sentences: Mapping[str, Sequence[str]], *, pooler: str = "mean",
                   batch_size: int = 64) -> Embeddings:
    """Pool every layer of every sentence of every language in one pass (longest first)."""
    was_training = model.training
    model.eval()
    pool_fn = get_pooler(pooler)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    flat = [(lang, i, encode(tokenizer, s)) for lang, rows in sentences.items() for i, s in enumerate(rows)]
    order = sorted(range(len(flat)), key=lambda k: -len(flat[k][2]))
    out: dict[str, list] = {lang: [None] * len(rows) for lang, rows in sentences.items()}
    try:
        for start in range(0, len(order), batch_size):
            chunk = [flat[k] for k in order[start: start + batch_size]]
            width = max(len(ids) for _, _, ids in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, (_, _, seq) in enumerate(chunk):
                ids[row, : len(seq)] = torch.tensor(seq)
                mask[row, : len(seq)] = 1
            ids, mask = ids.to(device), mask.to(device)
            hidden = hidden_states_forward(model, ids, mask)
            pooled = torch.stack([pool_fn(h.float(), mask) for h in hidden], dim=1).cpu()  # (batch, L+1, H)
            for row, (lang, i, _) in enumerate(chunk):
                out[lang][i] = pooled[row]
    finally:
        model.train(was_training)
    return Embeddings({lang: torch.stack(rows, dim=1) for lang, rows in out.items()})


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = torch.nn.functional.normalize(a, dim=-1)
    b = torch.nn.functional.normalize(b, dim=-1)
    return a @ b.transpose(-1, -2)


def retrieval_top1(sim: torch.Tensor) -> float:
    """Share of rows whose largest entry is on the diagonal (pivot -> other)."""
    return float((sim.argmax(dim=-1) == torch.arange(sim.shape[-1])).float().mean())


def mexa(sim: torch.Tensor) -> float:
    """Share of i whose diagonal entry is strictly the largest of its row AND its column."""
    diag = sim.diagonal()
    off = sim.clone()
    off.fill_diagonal_(float("-inf"))
    return float(((diag > off.max(dim=1).values) & (diag > off.max(dim=0).values)).float().mean())


def alignment_metrics(emb: Embeddings, *, pivot: str, layer: int) -> dict[str, float]:
    """Retrieval top-1 at ``layer`` and MEXA at every layer, per non-pivot language, with
    means over languages (the contract's names)."""
    out: dict[str, float] = {}
    base = emb.vectors[pivot]
    langs = [lang for lang in sorted(emb.vectors) if lang != pivot]
    for lang in langs:
        sims = cosine_matrix(base, emb.vectors[lang])          # (L+1, N, N)
        out[f"align/retrieval/{lang}/top1"] = retrieval_top1(sims[layer])
        for k in range(sims.shape[0]):
            out[f"align/mexa/{lang}/layer{k}"] = mexa(sims[k])
        out[f"align/mexa/{lang}"] = out[f"align/mexa/{lang}/layer{layer}"]
    if langs:
        out["align/retrieval/top1"] = sum(out[f"align/retrieval/{lang}/top1"] for lang in langs) / len(langs)
        out["align/mexa"] = sum(out[f"align/mexa/{lang}"] for lang in langs) / len(langs)
    return out


def alignment_by_pair(emb: Embeddings, pivot_rows: Mapping[str, str], *, pivot: str, layer: int) -> dict[str, float]:
    """``alignment_metrics`` for bitext that is parallel per language pair only (Tatoeba: the
    English sentences differ from one pair to the next): language l against its own pivot
    rows, ``emb.vectors[pivot_rows[l]]``; then the means over languages, as there."""
    out: dict[str, float] = {}
    for lang, key in sorted(pivot_rows.items()):
        out.update({k: v for k, v in alignment_metrics(
            Embeddings({pivot: emb.vectors[key], lang: emb.vectors[lang]}), pivot=pivot, layer=layer).items()
            if f"/{lang}" in k})
    langs = sorted(pivot_rows)
    if langs:
        out["align/retrieval/top1"] = sum(out[f"align/retrieval/{lang}/top1"] for lang in langs) / len(langs)
        out["align/mexa"] = sum(out[f"align/mexa/{lang}"] for lang in langs) / len(langs)
    return out
