"""Where xalign keeps things on this machine: the one ``$XALIGN_HOME`` root (default
``~/.cache/xalign``) for caches (built worlds, tokenised data)."""

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
