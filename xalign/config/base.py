"""The base of every config model: unknown keys are errors, defaults are validated too."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


class Section(BaseModel):
    """A node of the config tree.

    ``extra="forbid"`` turns a typo into an error (the loader adds a did-you-mean);
    ``validate_default`` keeps defaults honest; ``frozen`` because a resolved config is a
    record of what ran, not a scratchpad.
    """

    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True)


def _no_bool(value: Any) -> Any:
    # YAML's `yes`/`true` would otherwise pass as 1 for an int field.
    if isinstance(value, bool):
        raise ValueError(f"must be a number, got {value!r}")
    return value


PositiveInt = Annotated[int, BeforeValidator(_no_bool), Field(gt=0)]
NonNegInt = Annotated[int, BeforeValidator(_no_bool), Field(ge=0)]
NonNegFloat = Annotated[float, BeforeValidator(_no_bool), Field(ge=0, allow_inf_nan=False)]
PositiveFloat = Annotated[float, BeforeValidator(_no_bool), Field(gt=0, allow_inf_nan=False)]
Probability = Annotated[float, BeforeValidator(_no_bool), Field(ge=0, le=1)]


@dataclass(frozen=True)
class FileRelative:
    """Marks a path field: a relative value written in a config file is resolved against
    that file's folder, as ``extends`` is (a value given on the command line stays relative
    to the working directory). ``dotted_only``: only values that start with ``./`` or
    ``../`` are paths (a model field also takes hub ids such as ``org/name``)."""

    dotted_only: bool = False

    def resolve(self, value: str, folder: Path) -> str:
        if "://" in value or value.startswith(("/", "~")):
            return value
        if self.dotted_only and not (value.startswith(("./", "../")) or value in (".", "..")):
            return value
        return os.path.normpath(os.path.join(folder, value))


#: A local path (file, glob or folder; may hold ``{lang}``) relative to the config file.
RELATIVE_TO_FILE = FileRelative()
