"""The seam between tasks and scoring: a task turns its data into EvalItems; the scorer
turns EvalItems into per-option scores. Neither side imports the other."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EvalItem:
    """One multiple-choice question, rendered.

    The text scored for option j is ``prefix + context + options[j]``; the log-likelihood
    is summed over the tokens of ``options[j]`` only. ``prefix`` (template header and
    demonstrations) is the same string for every item of one (task, language, template,
    shots, seed) evaluation, so the scorer encodes it once and reuses its KV cache.
    """

    task: str
    lang: str
    idx: str
    prefix: str
    context: str
    options: tuple[str, ...]
    gold: int


@dataclass(frozen=True)
class OptionScore:
    """Log-likelihood of one option given prefix + context."""

    logprob: float      # summed over the option's tokens
    n_tokens: int       # tokens of the option (for per-token normalisation)
    n_chars: int        # characters of the option string (for per-character normalisation)
    is_greedy: bool     # every option token is the argmax continuation
