"""The base of every config model: unknown keys are errors, defaults are validated too."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A node of the config tree.

    ``extra="forbid"`` turns a typo into an error (the loader adds a did-you-mean);
    ``validate_default`` keeps defaults honest; ``frozen`` because a resolved config is a
    record of what ran, not a scratchpad.
    """

    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True)
