"""Names in workflows: the camelCase a workflow writes against the snake_case a table has.

One converter for every place a workflow names a column (condition paths,
template variables, record fields), so ``userID`` means ``user_id`` everywhere.
Pure: imports nothing of Dramatiq, Redis or the settings.
"""

from __future__ import annotations

import re

# "HTTPStatus" -> "HTTP_Status": a run of capitals ends where a capitalised word starts.
_ACRONYM_END = re.compile(r"([A-Z]+)([A-Z][a-z])")
# "userID" -> "user_ID", "visitType" -> "visit_Type": a capital after a lower-case letter or digit.
_WORD_START = re.compile(r"([a-z0-9])([A-Z])")


def camel_to_snake(name: str) -> str:
    """``userID`` -> ``user_id``, ``HTTPStatus`` -> ``http_status``; snake_case stays as it is."""
    return _WORD_START.sub(r"\1_\2", _ACRONYM_END.sub(r"\1_\2", name)).lower()
