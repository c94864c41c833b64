"""Typed, validated configuration: YAML + ``extends`` + dotted overrides (see loader.py)."""

from xalign.config.loader import ConfigError, Problem, flatten, from_overrides, load
from xalign.config.schema import POOLER_NAMES, WORLD_MODEL, RunConfig


def load_run(path, overrides=()) -> RunConfig:
    """The run config in ``path`` (following ``extends``) with dotted overrides applied."""
    return load(RunConfig, path, overrides)


__all__ = ["ConfigError", "Problem", "RunConfig", "POOLER_NAMES", "WORLD_MODEL", "flatten",
           "from_overrides", "load", "load_run"]
