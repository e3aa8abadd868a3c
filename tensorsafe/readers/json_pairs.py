"""JSON read with every duplicate key kept: files inside model folders are read by several JSON
readers, which disagree on which of two equal keys wins, so each check looks at all of them."""
from __future__ import annotations

import json

from tensorsafe.errors import ParseError


class JsonObject(list):
    """A JSON object as its list of ``(key, value)`` pairs in text order, duplicate keys kept."""

    def get(self, key: str, default: object = None) -> object:
        """The first value under ``key``."""
        return next((v for k, v in self if k == key), default)

    def every(self, key: str) -> list:
        """Every value under ``key``."""
        return [v for k, v in self if k == key]


def read_json_pairs(raw: bytes | str) -> object:
    """The document as nested lists, plain values and :class:`JsonObject`; ``ParseError`` when it is not JSON."""
    try:
        return json.loads(raw, object_pairs_hook=JsonObject)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ParseError(f"not valid JSON ({exc})") from exc
    except RecursionError as exc:
        raise ParseError("nested too deeply to read") from exc
