"""The API's JSON parser: DRF's, with nesting too deep for the decoder refused as bad input."""

from __future__ import annotations

from typing import Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser


class SafeJSONParser(JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:  # ~1,000 nested arrays or objects: a 400, not a 500
            raise ParseError("JSON parse error - nesting too deep") from None
