"""Where xalign keeps things on this machine, under one root, ``$XALIGN_HOME`` (default
``~/.cache/xalign``): built worlds and tokenised data (caches, by content hash), and the
records, plots and reports of ``xalign eval`` and ``xalign report`` (unless ``--out`` says
otherwise), so that no command writes into whatever folder it was started from.
Checkpoints go where ``checkpoint.storage_path`` says (default ``~/ray_results``)."""

from __future__ import annotations

import os
from pathlib import Path


def xalign_home() -> Path:
    """``$XALIGN_HOME``, by default ``~/.cache/xalign``."""
    return Path(os.environ.get("XALIGN_HOME") or Path.home() / ".cache" / "xalign").expanduser()


def worlds_home() -> Path:
    """``$XALIGN_HOME/worlds``: built synthetic worlds, by content hash."""
    return xalign_home() / "worlds"


def data_cache_home() -> Path:
    """``$XALIGN_HOME/cache/data``: tokenised run data, by content hash."""
    return xalign_home() / "cache" / "data"


def eval_results_dir(name: str) -> Path:
    """``$XALIGN_HOME/eval_results/<name>``: records and plots of one ``xalign eval``."""
    return xalign_home() / "eval_results" / name


def claim_new_dir(path: Path) -> Path:
    """Create ``path``, or ``path-2``, ``path-3``, ... if it exists: a folder no other command
    writes into (two ``xalign eval`` started in the same second, or a ``run_name`` used twice,
    would otherwise write over each other's records). ``mkdir`` without ``exist_ok`` is the
    claim, so two processes never get the same folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    candidate, n = path, 1
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            n += 1
            candidate = path.with_name(f"{path.name}-{n}")


def reports_dir(name: str) -> Path:
    """``$XALIGN_HOME/reports/<name>``: the plots and best config of ``xalign report <name>``."""
    return xalign_home() / "reports" / name
