"""Templates: camelCase over snake_case columns, strict variables, sandboxed."""

from __future__ import annotations

import pytest

from actors.actions.base import require
from actors.templates import as_records, camel_to_snake, from_single_braces, referenced_fields, render
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
    recipient = render("{{client.email}}", context, field="recipient")
    with pytest.raises(StepError, match=r"recipient \{\{client.email\}\} is empty for this record"):
        require(recipient, "recipient {{client.email}}")


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ('{{ invoice.amount_cents | money("USD", cents=True) }}', "$1,450.00"),
        ('{{ invoice.total | money("EUR") }}', "€12.50"),
        ('{{ invoice.total | money("CHF") }}', "12.50 CHF"),
        ("{{ invoice.due_date | date }}", "Nov 22, 2026"),
        ('{{ invoice.sent_at | date("%Y-%m-%d %H:%M") }}', "2026-11-20 09:30"),
        ("{{ invoice.paid_at | date }}", ""),
    ],
)
def test_money_and_date_filters(source: str, expected: str) -> None:
    context = as_records({"invoice": {"amount_cents": 145000, "total": "12.5", "due_date": "2026-11-22",
                                      "sent_at": "2026-11-20T09:30:00+00:00", "paid_at": None}})
    assert render(source, context, field="message") == expected


def test_filters_reject_what_they_cannot_read() -> None:
    context = as_records({"invoice": {"total": "twelve", "due": "soon"}})
    with pytest.raises(TemplateRenderError, match="message: money filter: 'twelve' is not a number"):
        render("{{ invoice.total | money }}", context, field="message")
    with pytest.raises(TemplateRenderError, match="not an ISO date"):
        render("{{ invoice.due | date }}", context, field="message")


def test_html_bodies_escape_values_and_text_bodies_do_not() -> None:
    context = as_records({"client": {"first_name": "<script>x</script>"}})
    assert render("<p>{{client.firstName}}</p>", context, field="html", html=True) == (
        "<p>&lt;script&gt;x&lt;/script&gt;</p>")
    assert render("{{client.firstName}}", context, field="message") == "<script>x</script>"


def test_single_braces_become_templates() -> None:
    assert from_single_braces("Patient {appointment.patientId}") == "Patient {{appointment.patientId}}"
    assert from_single_braces("{{ already }} {x}") == "{{ already }} {x}"
    assert from_single_braces('{"json": 1}') == '{"json": 1}'


def test_referenced_fields_lists_name_attribute_pairs() -> None:
    assert referenced_fields("Hi {{client.firstName}}, {{ job.title | upper }} {{ x }}") == {
        ("client", "firstName"), ("job", "title")}
