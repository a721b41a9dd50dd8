"""The base of every error labelsieve raises for bad input; the CLI prints these without a traceback."""

from collections.abc import Mapping
from typing import Any


class LabelsieveError(Exception):
    """A problem with the user's input, params or data, explained in the message."""


class OutputError(LabelsieveError):
    """An output cannot be written: the folder is read-only, or the disk or a file-size limit is full."""


def field_problems(record: Mapping[str, Any], fields: Mapping[str, tuple[type, ...]]) -> list[str]:
    """What is wrong with the typed fields of a JSON object: one line per key that is missing or of another
    type (a bool never counts as a number)."""
    return [
        f"{key} is missing or not {' or '.join(t.__name__ for t in types)}"
        for key, types in fields.items()
        if not isinstance(record.get(key), types) or isinstance(record.get(key), bool)
    ]
