"""YAML files with ``extends:`` and dotted ``key=value`` overrides, validated into a typed
tree, with every problem reported at once (file:line, key path, what must hold, what was
given) before any expensive work starts."""

from __future__ import annotations

import copy
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from xalign.config.base import FileRelative
from xalign.errors import XalignError
from xalign.suggest import did_you_mean

T = TypeVar("T", bound=BaseModel)


@dataclass(frozen=True)
class Problem:
    key: str
    message: str
    where: Optional[str] = None  # "file.yaml:12" or "override `a.b=1`"

    def __str__(self) -> str:
        prefix = f"{self.where}: " if self.where else ""
        key = f"`{self.key}`: " if self.key else ""
        return f"{prefix}{key}{self.message}"


class ConfigError(XalignError, ValueError):
    """All problems of a config, listed together."""

    def __init__(self, problems: Sequence[Problem], *, source: Optional[str] = None):
        self.problems = list(problems)
        self.source = source
        head = f"{len(self.problems)} problem(s) in {source}" if source else f"{len(self.problems)} config problem(s)"
        super().__init__(head + ":\n" + "\n".join(f"  - {p}" for p in self.problems))


# --- YAML ------------------------------------------------------------------------------------

class _Loader(yaml.SafeLoader):
    """Safe loader that also reads ``1e-5`` as a float (YAML 1.1 wants ``1.0e-5``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                |\.[0-9_]+(?:[eE][-+][0-9]+)?
                |[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def parse_scalar(text: str) -> Any:
    """A CLI value as YAML would read it: ``0.1`` -> float, ``[1, 2]`` -> list, ``x`` -> str."""
    try:
        return yaml.load(text, Loader=_Loader) if text.strip() else ""
    except yaml.YAMLError:
        return text


def _walk_lines(node: yaml.Node, prefix: str, lines: dict[str, int], dups: list[tuple[str, int]]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            path = f"{prefix}.{key}" if prefix else key
            if key in seen:
                dups.append((path, key_node.start_mark.line + 1))
            seen.add(key)
            lines[path] = key_node.start_mark.line + 1
            _walk_lines(value_node, path, lines, dups)


def read_yaml(path: Path) -> tuple[dict, dict[str, int], list[Problem]]:
    """Read one YAML file safely; return its mapping, the line of every dotted key, and the
    problems found (syntax errors, duplicate keys, a top level that is not a mapping)."""
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}, {}, [Problem("", "file not found", where)]
    except IsADirectoryError:
        return {}, {}, [Problem("", "is a directory, expected a YAML file", where)]
    except UnicodeDecodeError as exc:
        return {}, {}, [Problem("", f"is not UTF-8 text ({exc.reason} at byte {exc.start})", where)]
    try:
        node = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        loc = f"{where}:{mark.line + 1}" if mark else where
        return {}, {}, [Problem("", f"invalid YAML: {getattr(exc, 'problem', exc)}", loc)]
    if data is None:
        return {}, {}, []
    if not isinstance(data, dict):
        return {}, {}, [Problem("", f"the top level must be a mapping of keys, got {type(data).__name__}", where)]
    lines: dict[str, int] = {}
    dups: list[tuple[str, int]] = []
    _walk_lines(node, "", lines, dups)
    problems = [Problem(k, "duplicate key (YAML would silently keep the last one)", f"{where}:{n}") for k, n in dups]
    return data, lines, problems


# --- extends and merging ---------------------------------------------------------------------

def deep_merge(base: dict, top: dict) -> dict:
    """``top`` over ``base``: mappings merge key by key, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass
class Loaded:
    """Raw merged data of a file and its ``extends`` chain, with where each key came from."""

    data: dict
    where: dict[str, str]
    problems: list[Problem]
    files: list[Path]


def load_raw(path: Path | str, model: Optional[type[BaseModel]] = None, *, _stack: tuple[Path, ...] = ()) -> Loaded:
    """The data of ``path`` merged over its ``extends`` chain; with ``model``, the relative
    values of its path fields resolved against the folder of the file that sets them."""
    path = Path(path).expanduser().resolve()
    if path in _stack:
        chain = " -> ".join(p.name for p in (*_stack, path))
        return Loaded({}, {}, [Problem("extends", f"`extends` cycle: {chain}", str(_stack[-1]))], [])
    data, lines, problems = read_yaml(path)
    where = {k: f"{path}:{n}" for k, n in lines.items()}
    if model is not None:
        resolve_file_paths(model, data, path.parent)
    merged: dict = {}
    merged_where: dict[str, str] = {}
    files = [path]
    parents = data.pop("extends", None)
    if parents is not None:
        if isinstance(parents, str):
            parents = [parents]
        if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
            problems.append(Problem("extends", f"must be a file name or a list of file names, got {parents!r}",
                                    where.get("extends", str(path))))
            parents = []
        for parent in parents:
            parent_path = (path.parent / parent).resolve()
            if not parent_path.is_file():
                problems.append(Problem("extends", f"file not found: {parent!r} (looked at {parent_path})",
                                        where.get("extends", str(path))))
                continue
            sub = load_raw(parent_path, model, _stack=(*_stack, path))
            merged = deep_merge(merged, sub.data)
            merged_where.update(sub.where)
            problems.extend(sub.problems)
            files.extend(sub.files)
    merged = deep_merge(merged, data)
    merged_where.update({k: v for k, v in where.items() if k != "extends"})
    return Loaded(merged, merged_where, problems, files)


def resolve_file_paths(model: type[BaseModel], data: Any, folder: Path) -> None:
    """In place: the values of ``model``'s path fields (marked ``FileRelative``) in ``data``,
    the keys of one file, resolved against ``folder`` (sections and mappings of sections too)."""
    if not isinstance(data, dict):
        return
    for key, value in data.items():
        field = model.model_fields.get(key)
        if field is None:
            continue
        marker = next((m for m in field.metadata if isinstance(m, FileRelative)), None)
        if marker is not None:
            if isinstance(value, str):
                data[key] = marker.resolve(value, folder)
            continue
        if typing.get_origin(field.annotation) is dict:
            inner = _section_type(typing.get_args(field.annotation)[-1])
            for item in value.values() if inner is not None and isinstance(value, dict) else ():
                resolve_file_paths(inner, item, folder)
        elif (section := _section_type(field.annotation)) is not None:
            resolve_file_paths(section, value, folder)


# --- overrides -------------------------------------------------------------------------------

def apply_overrides(data: dict, overrides: Iterable[str], where: dict[str, str]) -> list[Problem]:
    """Set dotted ``key=value`` overrides into ``data`` in place; return the problems."""
    problems = []
    for item in overrides:
        if "=" not in item:
            problems.append(Problem("", f"an override must look like key=value (e.g. objective.temperature=0.1), got {item!r}",
                                    "command line"))
            continue
        key, _, text = item.partition("=")
        key = key.strip()
        parts = key.split(".")
        if not key or any(not p for p in parts):
            problems.append(Problem(key, f"not a dotted key path: {item!r}", "command line"))
            continue
        problem = set_dotted(data, key, parse_scalar(text))
        if problem is not None:
            problems.append(Problem(problem.key, problem.message, f"override `{item}`"))
            continue
        for k in [k for k in where if k == key or k.startswith(key + ".")]:
            del where[k]
        where[key] = f"override `{item}`"
    return problems


def set_dotted(data: dict, key: str, value: Any) -> Optional[Problem]:
    """Set ``value`` at the dotted ``key`` of ``data`` in place (missing or null sections are
    created); a Problem when a section on the way holds a value instead."""
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            return Problem(".".join(parts[: i + 1]), f"is {child!r}, not a section, so {key!r} cannot be set", None)
        node = child
    node[parts[-1]] = value
    return None


def with_dotted(data: dict, key: str, value: Any) -> dict:
    """A deep copy of ``data`` with ``value`` at ``key`` (unchanged where ``key`` cannot be set)."""
    out = copy.deepcopy(data)
    set_dotted(out, key, value)
    return out


# --- validation ------------------------------------------------------------------------------

def _fields_at(model: type[BaseModel], path: Sequence[str]) -> list[str]:
    """Field names of the section at ``path`` of ``model`` (for did-you-mean)."""
    current: Any = model
    for part in path:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = _section_type(field.annotation)
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def _section_type(annotation: Any) -> Optional[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _section_type(arg)
        if found is not None:
            return found
    return None


def _hint(word: Any, choices: Iterable[str]) -> str:
    """" Did you mean 'x'? Available: a, b." (only the list when nothing is close)."""
    choices = sorted(map(str, choices))
    return f"{did_you_mean(word, choices)} Available: {', '.join(choices)}." if choices else did_you_mean(word, choices)


def _clean_loc(loc: Sequence[Any], data: Any) -> list[str]:
    """Drop pydantic's union-branch tags from an error location, keep real keys/indices."""
    out: list[str] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            out.append(str(part))
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            out.append(str(part))
            node = node[part]
        elif isinstance(part, str) and not isinstance(node, (dict, list)):
            continue  # a union tag like 'int' or 'function-after[...]'
        elif isinstance(part, str) and isinstance(node, dict) and "[" not in part:
            out.append(part)  # a missing key
            node = None
    return out


_MESSAGES = {
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping of keys",
    "model_attributes_type": "must be a mapping of keys",
    "tuple_type": "must be a list",
    "too_short": "has too few items",
    "too_long": "has too many items",
    "missing": "is required",
}


def problems_from_validation(exc: ValidationError, data: dict, where: dict[str, str],
                             model: type[BaseModel], default_where: Optional[str]) -> list[Problem]:
    problems = []
    for err in exc.errors():
        path = _clean_loc(err["loc"], data)
        key = ".".join(path)
        kind = err["type"]
        given = err.get("input")
        ctx = err.get("ctx") or {}
        if kind == "extra_forbidden":
            msg = "unknown key." + _hint(path[-1], _fields_at(model, path[:-1]))
        elif kind == "literal_error":
            allowed = re.findall(r"'([^']*)'", ctx.get("expected", ""))
            msg = f"unknown value {given!r}." + _hint(given, allowed)
        elif kind in ("value_error", "assertion_error"):
            msg = str(ctx.get("error", err["msg"])).removeprefix("Value error, ")
        else:
            msg = _MESSAGES.get(kind, err["msg"]).format(**ctx) + f", got {given!r}"
        loc = where.get(key)
        parent = key
        while loc is None and "." in parent:
            parent = parent.rsplit(".", 1)[0]
            loc = where.get(parent)
        problems.append(Problem(key, msg, loc or default_where))
    return problems


def validate(model: type[T], data: dict, *, where: Optional[dict[str, str]] = None,
             source: Optional[str] = None, problems: Sequence[Problem] = ()) -> T:
    """Validate raw data into ``model``; raise one ConfigError listing every problem."""
    found = list(problems)
    result = None
    try:
        result = model.model_validate(data)
    except ValidationError as exc:
        found.extend(problems_from_validation(exc, data, where or {}, model, source))
    if found:
        raise ConfigError(found, source=source)
    return result  # type: ignore[return-value]


def load(model: type[T], path: Path | str, overrides: Sequence[str] = ()) -> T:
    """Read ``path`` (following ``extends``), apply overrides, validate into ``model``."""
    loaded = load_raw(path, model)
    problems = list(loaded.problems)
    if not loaded.data and not overrides and not problems:
        problems.append(Problem("", "empty: a run needs at least one key, e.g. `extends: afp-synthetic.yaml` or a "
                                "`model:` and a `data:` section; to run every default on purpose, say so: `name: afp`",
                                str(path)))
    problems += apply_overrides(loaded.data, overrides, loaded.where)
    return validate(model, loaded.data, where=loaded.where, source=str(path), problems=problems)


def from_overrides(model: type[T], overrides: Sequence[str], *, source: str = "command line") -> T:
    """Build ``model`` from defaults plus dotted overrides (no file)."""
    data: dict = {}
    where: dict[str, str] = {}
    problems = apply_overrides(data, overrides, where)
    return validate(model, data, where=where, source=source, problems=problems)


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """A config (model or dict) as ``{dotted.key: leaf value}``: the MLflow params and the
    names sweeps search over."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    out: dict[str, Any] = {}
    if isinstance(obj, dict) and obj:
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    else:
        out[prefix] = obj
    return out
