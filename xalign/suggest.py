"""The one "Did you mean ...?" helper: a registry miss names the nearest known name (or a
known alias) and lists what is available. Plain Python, imported by config, data, tasks and
eval alike."""

from __future__ import annotations

import difflib
from typing import Any, Iterable, Mapping, Optional


def did_you_mean(name: Any, choices: Iterable[str], aliases: Optional[Mapping[str, str]] = None) -> str:
    """" Did you mean 'xcopa'?" for a known alias or a near miss (case-insensitive as a
    fallback), else ""."""
    key, choices = str(name), [str(c) for c in choices]
    if aliases and key in aliases:
        return f" Did you mean {aliases[key]!r}?"
    close = difflib.get_close_matches(key, choices, n=1, cutoff=0.6)
    if not close:
        lowered = difflib.get_close_matches(key.lower(), [c.lower() for c in choices], n=1, cutoff=0.6)
        close = [c for c in choices if c.lower() in lowered]
    return f" Did you mean {close[0]!r}?" if close else ""


def unknown(kind: str, name: Any, choices: Iterable[str], *, aliases: Optional[Mapping[str, str]] = None,
            where: str = "", key: Any = None) -> str:
    """The message of a registry miss: "Unknown task 'xcpa'. Did you mean 'xcopa'? Available: ...".
    ``key``: the form of ``name`` to look up, when it differs (e.g. lower-cased)."""
    choices = [str(c) for c in choices]
    hint = did_you_mean(name if key is None else key, choices, aliases)
    return (f"{where}Unknown {kind} {name!r}.{hint} "
            f"Available: {', '.join(sorted(choices)) or '(none)'}")
