"""Shared fixtures: a tiny synthetic world with its base model (built once per session,
seconds), and offline Hugging Face settings so an accidental download fails loudly."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from xalign.config import from_overrides  # noqa: E402
from xalign.config.world import WorldConfig  # noqa: E402

#: A world small enough to build and pre-train in a few seconds on 2 cores.
TINY_WORLD = [
    "corpus.tokens=40000", "facts.people=24", "facts.anchor_people=8", "facts.pivot_only_share=0.5",
    "pairs.train_per_language=300", "pairs.heldout_per_language=50", "instructions.items=120",
    "tasks.dev_items=20", "tasks.test_items=40",
    "base_model.layers=2", "base_model.hidden_size=32", "base_model.heads=2",
    "base_model.intermediate_size=64", "base_model.steps=20", "base_model.batch_size=8",
]


@pytest.fixture(scope="session")
def tiny_world_overrides() -> list[str]:
    return list(TINY_WORLD)


@pytest.fixture(scope="session", autouse=True)
def xalign_home(tmp_path_factory):
    """XALIGN_HOME for the session: worlds and data caches built by code under test land
    here, never in the user's ~/.cache/xalign."""
    home = tmp_path_factory.mktemp("xalign_home")
    old = os.environ.get("XALIGN_HOME")
    os.environ["XALIGN_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("XALIGN_HOME", None)
    else:
        os.environ["XALIGN_HOME"] = old


@pytest.fixture(scope="session")
def tiny_world(xalign_home):
    """(WorldConfig, world directory) of a tiny world with its base model, in the cache."""
    from xalign.synthetic import build_world
    from xalign.synthetic.base_model import BASE_MODEL_STAGE

    cfg = from_overrides(WorldConfig, TINY_WORLD)
    return cfg, build_world(cfg, extra_stages=[BASE_MODEL_STAGE]).path


# --- the reliability suite's counts --------------------------------------------------------
# Fault-injection tests record each fault they inject (and whether the run survived it, and
# runs lost); the bad-input suite records each input it tried (and whether it was refused).
# The totals are printed at the end of the session.
_RELIABILITY = {"faults": [], "bad_inputs": []}


@pytest.fixture
def record_fault():
    def record(name: str, *, survived: bool, runs_lost: int = 0) -> None:
        _RELIABILITY["faults"].append((name, survived, runs_lost))
    return record


@pytest.fixture
def record_bad_input():
    def record(name: str, *, refused: bool) -> None:
        _RELIABILITY["bad_inputs"].append((name, refused))
    return record


def pytest_terminal_summary(terminalreporter):
    faults, bad = _RELIABILITY["faults"], _RELIABILITY["bad_inputs"]
    if not faults and not bad:
        return
    tr = terminalreporter
    tr.section("reliability")
    tr.write_line(f"faults injected: {len(faults)}, survived: {sum(s for _, s, _ in faults)}, "
                  f"runs lost: {sum(lost for *_, lost in faults)}")
    for name, survived, lost in faults:
        tr.write_line(f"  {'survived' if survived else 'NOT SURVIVED'}: {name}" + (f" ({lost} runs lost)" if lost else ""))
    tr.write_line(f"bad inputs tried: {len(bad)}, refused: {sum(r for _, r in bad)}")
