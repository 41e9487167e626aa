"""The pydantic base every API model shares: camelCase on the wire, strict about unknown keys."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

#: A PostgreSQL identifier or similar short name (NAMEDATALEN - 1 bytes).
Identifier = Annotated[str, Field(min_length=1, max_length=63)]
#: A short free-form string inside lists (CEL cost rules need every string bounded).
ShortText = Annotated[str, Field(max_length=256)]


class ApiModel(BaseModel):
    """camelCase aliases (Kubernetes convention), snake_case attributes, unknown keys refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=False,
        validate_default=True,
    )

    def dump(self) -> dict[str, Any]:
        """The wire form: aliases, JSON types, nothing unset."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
