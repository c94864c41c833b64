"""The built-in synthetic multilingual world (design.md): a deterministic stand-in for real
data, built in seconds, in the same formats as the real data.

    result = build_world(WorldConfig(seed=1))   # -> WorldResult(path, manifest, reused)
"""

from xalign.config.world import WorldConfig
from xalign.synthetic.build import (
    GENERATOR_VERSION,
    STAGES,
    WorldError,
    WorldResult,
    build_world,
    content_hash,
    ensure_world,
    evaluation_world,
    load_manifest,
    run_world,
)
from xalign.paths import worlds_home

__all__ = ["GENERATOR_VERSION", "STAGES", "WorldConfig", "WorldError", "WorldResult",
           "build_world", "content_hash", "ensure_world", "evaluation_world", "load_manifest", "run_world",
           "worlds_home"]
