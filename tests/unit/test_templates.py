"""Templates: camelCase over snake_case columns, strict variables, sandboxed."""

from __future__ import annotations

import pytest

from actors.actions import ACTIONS
from actors.templates import as_records, camel_to_snake, render
from config.errors import StepError, TemplateRenderError

CONTEXT = as_records({
    "job": {"title": "Replace faucet", "status": "completed"},
    "client": {"first_name": "Maria", "email": "maria@example.com", "phone": "+15550101001"},
})


def test_camel_case_reads_snake_case_columns() -> None:
    assert render("Dear {{client.firstName}}, {{job.title}}", CONTEXT, field="message") == (
        "Dear Maria, Replace faucet"
    )
    assert camel_to_snake("patientId") == "patient_id"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{client.lastName}}", "client.lastName is undefined"),
        ("{{invoice.total}}", "invoice is undefined"),
        ("Hi {{ client.nickname | upper }}", "client.nickname is undefined"),
    ],
)
def test_undefined_variables_fail_with_their_name(source: str, expected: str) -> None:
    with pytest.raises(TemplateRenderError) as caught:
        render(source, CONTEXT, field="subject")
    assert expected in str(caught.value)
    assert str(caught.value).startswith("subject:")


def test_sandbox_refuses_internals() -> None:
    with pytest.raises(TemplateRenderError, match="security"):
        render("{{ ''.__class__.__mro__ }}", CONTEXT, field="message")


def test_syntax_errors_are_reported() -> None:
    with pytest.raises(TemplateRenderError, match="syntax error"):
        render("{{ job.title ", CONTEXT, field="message")


def test_null_columns_render_empty_and_an_empty_recipient_fails() -> None:
    context = as_records({"client": {"first_name": None, "email": None}, "job": {"title": "Fix"}})
    assert render("Dear {{client.firstName}}", context, field="message") == "Dear "
    config = {"recipient": "{{client.email}}", "subject": "{{job.title}}", "message": "Hi"}
    with pytest.raises(StepError, match=r"recipient: \{\{client.email\}\} is empty"):
        ACTIONS["email"].render(config, context)
