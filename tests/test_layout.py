"""The layout stays true: every import of an xalign module (at module level or inside a
function) runs the way docs/architecture.md says, and the CLI answers --help and validate
without importing torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "xalign"

LEAVES = {"xalign.errors", "xalign.suggest", "xalign.paths", "xalign.progress"}
#: What each part of xalign may import, besides itself (docs/architecture.md, "Import rule").
BELOW = {
    "xalign.errors": set(),
    "xalign.suggest": set(),
    "xalign.paths": set(),
    "xalign.progress": set(),
    "xalign.tasks": LEAVES,
    "xalign.config": LEAVES | {"xalign.tasks"},
    "xalign.data": LEAVES | {"xalign.config"},
    "xalign.model": LEAVES | {"xalign.config", "xalign.data"},
    "xalign.objectives": LEAVES | {"xalign.config", "xalign.data", "xalign.model"},
    "xalign.optim": LEAVES,
    "xalign.tracking": LEAVES | {"xalign.config"},
    "xalign.storage": LEAVES | {"xalign.config"},
    "xalign.synthetic": LEAVES | {"xalign.config", "xalign.data", "xalign.model", "xalign.objectives", "xalign.optim"},
    "xalign.eval": LEAVES | {"xalign.tasks", "xalign.config", "xalign.data", "xalign.model", "xalign.tracking",
                             "xalign.storage"},
}
BELOW["xalign.evaluate"] = BELOW["xalign.eval"] | {"xalign.eval", "xalign.synthetic"}
BELOW["xalign.train"] = (BELOW["xalign.synthetic"] | BELOW["xalign.eval"]
                         | {"xalign.synthetic", "xalign.eval", "xalign.objectives", "xalign.optim"})
BELOW["xalign.sweep"] = BELOW["xalign.train"] | {"xalign.train"}
BELOW["xalign.cli"] = set(BELOW) | {"xalign.evaluate", "xalign.train", "xalign.sweep"}


def part_of(module: str) -> str:
    """The part of the layout a module belongs to: the longest entry of BELOW it starts with."""
    parts = [p for p in BELOW if module == p or module.startswith(p + ".")]
    if not parts:
        raise AssertionError(f"{module} is in no part of the layout; add it to docs/architecture.md and BELOW")
    return max(parts, key=len)


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def xalign_imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) of every import of an xalign module in the file, wherever it
    is (module level, a function, a class, a TYPE_CHECKING block)."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "xalign"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.split(".")[0] != "xalign":
                continue
            if name == "xalign":   # from xalign import storage, tracking: the modules named
                found += [(node.lineno, f"xalign.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, name))
    return found


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def test_the_checker_sees_imports_inside_functions(tmp_path):
    text = "def f():\n    from xalign.train.driver import train\n    from .. import sweep\n"
    tree_path = tmp_path / "xalign" / "eval" / "probe.py"
    tree_path.parent.mkdir(parents=True)
    tree_path.write_text(text)
    global REPO
    saved, REPO = REPO, tmp_path
    try:
        found = [name for _, name in xalign_imports(tree_path)]
    finally:
        REPO = saved
    assert found == ["xalign.train.driver", "xalign.sweep"]
    assert part_of("xalign.train.driver") not in BELOW[part_of("xalign.eval.probe")]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_imports_run_one_way(path):
    own = part_of(module_name(path))
    wrong = [f"line {line}: imports {name} ({part_of(name)})" for line, name in xalign_imports(path)
             if part_of(name) != own and part_of(name) not in BELOW[own]]
    assert not wrong, (f"{path.relative_to(REPO)} ({own}) may import only {sorted(BELOW[own]) or 'nothing of xalign'}; "
                       + "; ".join(wrong))


def test_every_module_has_a_place():
    for path in SOURCES:
        part_of(module_name(path))


def test_architecture_page_lists_every_module():
    page = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = [str(p.relative_to(PACKAGE)) for p in SOURCES
               if p.name != "__init__.py" and str(p.relative_to(PACKAGE)) not in page]
    assert not missing, f"docs/architecture.md does not list {missing}"


@pytest.mark.parametrize("args", [["--help"], ["validate", "configs/runs/afp-synthetic.yaml"],
                                  ["validate", "configs/sweeps/demo.yaml"]])
def test_cli_starts_without_torch(args):
    code = ("import sys\nfrom xalign.cli import main\n"
            f"try:\n    rc = main({args!r})\nexcept SystemExit as e:\n    rc = e.code\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'ray', 'mlflow', 'datasets') if m in sys.modules)\n"
            "print('RC', rc, 'HEAVY', heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "RC 0 HEAVY []" in out.stdout, out.stdout + out.stderr
