"""The base of every config model: unknown keys are errors, defaults are validated too."""

from __future__ import annotations

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
