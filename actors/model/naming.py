"""Names in workflows against the names a table has: camelCase against snake_case, both ways.

One converter for every place a workflow names a column (condition paths,
template variables, record fields), so ``userID`` means ``user_id`` everywhere.
Pure: imports nothing of Dramatiq, Redis or the settings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Set

# "HTTPStatus" -> "HTTP_Status": a run of capitals ends where a capitalised word starts.
_ACRONYM_END = re.compile(r"([A-Z]+)([A-Z][a-z])")
# "userID" -> "user_ID", "visitType" -> "visit_Type": a capital after a lower-case letter or digit.
_WORD_START = re.compile(r"([a-z0-9])([A-Z])")


def camel_to_snake(name: str) -> str:
    """``userID`` -> ``user_id``, ``HTTPStatus`` -> ``http_status``; snake_case stays as it is."""
    return _WORD_START.sub(r"\1_\2", _ACRONYM_END.sub(r"\1_\2", name)).lower()


class AmbiguousName(LookupError):
    """A workflow's name fits several columns equally well (``patient_id`` and ``patientId``)."""

    def __init__(self, key: str, candidates: list[str]) -> None:
        super().__init__(f"{key!r} could be any of {', '.join(map(repr, candidates))}")
        self.key = key
        self.candidates = candidates


def column_for(key: str, columns: Iterable[str]) -> str | None:
    """The column ``key`` names: itself if there is one, else the one column
    spelled the same in snake_case or camelCase (``patientId`` finds
    ``patient_id``, ``first_name`` finds ``firstName``); None when no column
    fits. Raises :class:`AmbiguousName` when several do."""
    names = columns if isinstance(columns, (Set, Mapping)) else list(columns)
    if key in names:
        return key
    wanted = camel_to_snake(key)
    found = [name for name in names if camel_to_snake(name) == wanted]
    if len(found) > 1:
        raise AmbiguousName(key, sorted(found))
    return found[0] if found else None
