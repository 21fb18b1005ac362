"""One camelCase converter: conditions, templates and records agree on every key."""

from __future__ import annotations

from typing import Any

import pytest

from actors import naming
from actors.actions import records
from actors.conditions import parse_condition, resolve_path
from actors.templates import as_records, camel_to_snake, render


@pytest.mark.parametrize(
    ("name", "snake"),
    [
        ("userID", "user_id"),
        ("visitType", "visit_type"),
        ("patientId", "patient_id"),
        ("HTTPStatus", "http_status"),
        ("already_snake", "already_snake"),
        ("firstName", "first_name"),
        ("getHTTPResponseCode", "get_http_response_code"),
        ("ID", "id"),
        ("address2", "address2"),
        ("line2Text", "line2_text"),
        ("status", "status"),
    ],
)
def test_camel_to_snake(name: str, snake: str) -> None:
    assert naming.camel_to_snake(name) == snake


def test_there_is_one_converter() -> None:
    # templates re-exports it, records and workflow checks import it from there
    assert camel_to_snake is naming.camel_to_snake
    assert vars(records)["camel_to_snake"] is naming.camel_to_snake


ROW: dict[str, Any] = {"visit": {"user_id": 7, "visit_type": "Consultation", "patient_id": "p-1",
                                 "http_status": 200, "already_snake": "yes"}}


@pytest.mark.parametrize(
    ("key", "expected"),
    [("userID", 7), ("visitType", "Consultation"), ("patientId", "p-1"), ("HTTPStatus", 200),
     ("already_snake", "yes")],
)
def test_conditions_and_templates_resolve_the_same_key(key: str, expected: Any) -> None:
    assert resolve_path(ROW, f"visit.{key}") == expected
    condition = parse_condition({"field": f"visit.{key}", "operator": "equals", "value": expected}, "condition")
    assert condition.evaluate(ROW).matched
    assert render(f"{{{{ visit.{key} }}}}", as_records(ROW), field="body") == str(expected)
