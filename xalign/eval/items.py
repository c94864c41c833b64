"""The seam between tasks and scoring: a task turns its data into EvalItems; the scorer
turns EvalItems into per-option scores. Neither side imports the other."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EvalItem:
    """One multiple-choice question, rendered.

    The text scored for option j is ``prompt(j) + options[j]``; the log-likelihood is summed
    over the tokens of ``options[j]`` only. ``prompt(j) = prefix + context_of(j)``:

    - ``prefix`` (template header and demonstrations) is the same string for every item and
      every option of one (task, language, template, shots, seed) evaluation, so the scorer
      encodes it once and reuses its KV cache.
    - ``context_of(j)`` is ``context`` for every option (the usual shape: a shared question,
      different answers), or, when ``contexts`` is given, ``contexts[j]``: the options'
      own contexts, one per option, each starting with ``context`` (the text they share).
      This is lm-evaluation-harness's "multiple input" mode ("partial evaluation", used by
      Winogrande and XWinograd): each answer fills the blank in its own context and the
      same continuation, ``options[j]`` for every j, is scored after each.
    """

    task: str
    lang: str
    idx: str
    prefix: str
    context: str
    options: tuple[str, ...]
    gold: int
    #: Per-option contexts (lm-eval's "multiple input" mode); empty: every option uses ``context``.
    contexts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.contexts, tuple):
            object.__setattr__(self, "contexts", tuple(self.contexts))
        if self.contexts:
            where = f"item {self.task}/{self.lang}/{self.idx}"
            if len(self.contexts) != len(self.options):
                raise ValueError(f"{where}: {len(self.contexts)} contexts for {len(self.options)} options")
            apart = [j for j, c in enumerate(self.contexts) if not c.startswith(self.context)]
            if apart:
                raise ValueError(f"{where}: contexts {apart} do not start with the shared context {self.context!r}")

    def context_of(self, j: int) -> str:
        """Option j's context (after the prefix)."""
        return self.contexts[j] if self.contexts else self.context

    def prompt(self, j: int) -> str:
        """Everything before option j: ``prefix + context_of(j)``."""
        return self.prefix + self.context_of(j)

    def prompts(self) -> tuple[str, ...]:
        """``prompt(j)`` for every option."""
        return tuple(self.prompt(j) for j in range(len(self.options)))


@dataclass(frozen=True)
class OptionScore:
    """Log-likelihood of option j given ``prompt(j)`` (prefix + its context)."""

    logprob: float      # summed over the option's tokens
    n_tokens: int       # tokens of the option (for per-token normalisation)
    n_chars: int        # characters of the option string (for per-character normalisation)
    is_greedy: bool     # every option token is the argmax continuation
