"""One camelCase converter: conditions, templates and records agree on every key."""

from __future__ import annotations

from typing import Any

import pytest

from actors.actions import records
from actors.model import naming
from actors.model.conditions import parse_condition, resolve_path
from actors.model.templates import as_records, camel_to_snake, render


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
    # templates re-export it; records, templates and conditions find columns with one function
    from actors import tables
    from actors.model import conditions
    from actors.model import templates as template_module

    assert camel_to_snake is naming.camel_to_snake
    for module in (tables, conditions, template_module):
        assert vars(module)["column_for"] is naming.column_for
    assert "table_shape" in vars(records)


@pytest.mark.parametrize(
    ("key", "columns", "expected"),
    [
        ("patientId", ["id", "patient_id"], "patient_id"),  # a workflow's camelCase, a snake_case table
        ("patient_id", ["id", "patientId"], "patientId"),  # and the other way round (Prisma)
        ("patientId", ["patientId", "patient_id"], "patientId"),  # the exact name first
        ("PatientID", ["patientId"], "patientId"),
        ("visit_type", ["visitType", "status"], "visitType"),
        ("nope", ["id", "patientId"], None),
    ],
)
def test_column_for(key: str, columns: list[str], expected: str | None) -> None:
    assert naming.column_for(key, columns) == expected
    assert naming.column_for(key, dict.fromkeys(columns)) == expected


def test_a_name_fitting_two_columns_is_ambiguous() -> None:
    with pytest.raises(naming.AmbiguousName, match="'patientID' could be any of 'patientId', 'patient_id'"):
        naming.column_for("patientID", ["patient_id", "patientId"])


def test_snake_case_in_a_workflow_reads_camel_case_columns() -> None:
    row = {"patient": {"firstName": "Ana", "visitType": "Consultation"}}
    assert resolve_path(row, "patient.first_name") == "Ana"
    assert render("{{ patient.first_name }} / {{ patient.visit_type }}", as_records(row), field="body") == (
        "Ana / Consultation")


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
