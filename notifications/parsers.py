"""The REST API's JSON body parser, with the service's depth limit."""

from collections.abc import Mapping
from typing import IO, Any

from rest_framework.exceptions import ParseError

# get_encoding refuses charsets that are not text encodings (a bz2_codec body would decompress
# unbounded); the stubs do not have it yet.
from rest_framework.parsers import JSONParser, get_encoding  # type: ignore[attr-defined]

from .exceptions import InvalidJson
from .jsonlimits import json_parse


class LimitedJSONParser(JSONParser):
    """DRF's JSON parser, refusing documents nested deeper than ``JSON_MAX_DEPTH`` with a 400.

    DRF's own lets the ``RecursionError`` of a deeply nested body escape as a 500.
    """

    def parse(
        self, stream: IO[Any], media_type: str | None = None, parser_context: Mapping[str, Any] | None = None
    ) -> Any:
        try:
            return json_parse(stream.read().decode(get_encoding(parser_context or {})))
        except (InvalidJson, UnicodeDecodeError, LookupError) as exc:  # (LookupError: an unknown charset.)
            raise ParseError(f"The body is not valid JSON: {exc}", code="invalid_json") from None
