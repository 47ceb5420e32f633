"""Field types shared by the shapes, with the bounds and formats the OpenAPI schemas state."""

from __future__ import annotations

from typing import Annotated

import msgspec

Time = Annotated[
    str, msgspec.Meta(extra_json_schema={"format": "date-time", "description": "RFC 3339 UTC with milliseconds"})
]
Count = Annotated[int, msgspec.Meta(ge=0)]
Progress = Annotated[int, msgspec.Meta(ge=0, le=100)]
PageNumber = Annotated[int, msgspec.Meta(ge=1)]
