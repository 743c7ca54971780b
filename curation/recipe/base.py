"""The base of every recipe section model: unknown keys are errors, and assignments are validated too.

Its own module so that section models kept beside their stage (``curation.train.config``) can
derive from it without importing the whole recipe package.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

