"""Templates: camelCase over snake_case columns, strict variables, sandboxed and bounded."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from actors.actions.base import require
from actors.model import templates
from actors.model.limits import TEMPLATE_TIME_LIMIT_S
from actors.model.templates import (
    as_records,
    camel_to_snake,
    from_single_braces,
    referenced_fields,
    render,
)
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


# --- One tenant's template cannot stop, slow or change what another render sees ---


def test_a_template_cannot_change_the_context_other_fields_render_from() -> None:
    context = as_records({"client": {"first_name": "Maria"}})
    with pytest.raises(TemplateRenderError, match="security"):
        render("{{ client.update({'first_name': 'Eve'}) }}", context, field="subject")
    assert render("Dear {{ client.firstName }}", context, field="message") == "Dear Maria"


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        pytest.param("{{ range(10**6) | length }}", "asks range() for more than 10,000 numbers", id="range-million"),
        pytest.param("{{ range(50000) | length }}", "asks range() for more than 10,000 numbers", id="range-50000"),
        pytest.param("{{ ('x' * 10**9) | length }}", "builds a string longer than 262,144 characters",
                     id="string-times-billion"),
        pytest.param("{{ (['x'] * 300000) | length }}", "builds a list or mapping larger than 262,144",
                     id="list-times"),
        pytest.param("{{ 9 ** (9 ** 9) }}", "computes a number larger than 4,096 bits", id="power-9-9-9"),
        pytest.param("{{ (9 ** 100000) > 0 }}", "computes a number larger than 4,096 bits", id="power-big"),
        pytest.param("{% set ns = namespace(s='x') %}{% for i in range(30) %}{% set ns.s = ns.s ~ ns.s %}"
                     "{% endfor %}{{ ns.s | length }}", "builds a string longer than", id="concat-doubling"),
        pytest.param("{{ 'x'.center(300000) | length }}", "builds a string longer than", id="str-center"),
        pytest.param("{{ 'x' | center(300000) | length }}", "builds a string longer than", id="center-filter"),
        pytest.param("{{ '{:>300000}'.format(1) | length }}", "builds a string longer than", id="format-width"),
        pytest.param("{{ ('%300000d' % 1) | length }}", "builds a string longer than", id="printf-width"),
        pytest.param("{{ ('x' * 1000) | replace('x', 'y' * 1000) | length }}", "builds a string longer than",
                     id="replace"),
        pytest.param("{% set a = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1] %}{% set b = [a, a, a, a, a, a, a, a, a, a] %}"
                     "{% set c = [b, b, b, b, b, b, b, b, b, b] %}{% set d = [c, c, c, c, c, c, c, c, c, c] %}"
                     "{% set e = [d, d, d, d, d, d, d, d, d, d] %}{% set f = [e, e, e, e, e, e, e, e, e, e] %}"
                     "{{ f | length }}", "builds a list or mapping larger than", id="nested-lists"),
        pytest.param("{% for i in range(3000) %}{{ 'x' * 100 }}{% endfor %}", "renders more than 262,144 characters",
                     id="output"),
        pytest.param("{% set s %}{% for i in range(3000) %}{{ 'x' * 100 }}{% endfor %}{% endset %}{{ s | length }}",
                     "renders more than 262,144 characters", id="block-output"),
    ],
)
def test_templates_that_would_build_huge_values_are_refused(source: str, reason: str) -> None:
    started = time.monotonic()
    with pytest.raises(TemplateRenderError) as caught:
        render(source, CONTEXT, field="message")
    assert str(caught.value).startswith("template for message ") and reason in str(caught.value)
    assert time.monotonic() - started < 1.0


def test_lipsum_is_not_available() -> None:
    with pytest.raises(TemplateRenderError, match="lipsum is undefined"):
        render("{{ lipsum(10**5) }}", CONTEXT, field="message")


@pytest.mark.parametrize(
    "source",
    [
        pytest.param("{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
                     id="nested-loops"),
        pytest.param("{% macro twice(n) %}{% if n %}{{ twice(n - 1) }}{{ twice(n - 1) }}{% endif %}{% endmacro %}"
                     "{{ twice(40) }}", id="recursion"),
    ],
)
def test_a_slow_template_stops_at_the_time_limit(source: str) -> None:
    started = time.monotonic()
    with pytest.raises(TemplateRenderError) as caught:
        render(source, CONTEXT, field="subject")
    elapsed = time.monotonic() - started
    assert str(caught.value) == "template for subject took longer than 1 s"
    assert TEMPLATE_TIME_LIMIT_S <= elapsed < 1.5


def test_a_step_that_spent_its_time_renders_no_more() -> None:
    slow = "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}"
    started = time.monotonic()
    with pytest.raises(TemplateRenderError, match="ran past the 2 s all the templates of one step may take"):
        render(slow, CONTEXT, field="payload.b", time_left=0.2)
    assert time.monotonic() - started < 0.5
    with pytest.raises(TemplateRenderError, match="template for payload.c not rendered"):
        render("{{ job.title }}", CONTEXT, field="payload.c", time_left=0.0)


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="resident memory is read from /proc")
def test_a_template_holding_many_large_values_stops_at_the_memory_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each value is under the size limit; 800 of them are 200 MB. The time limit is
    # lifted so that only memory can stop it, however loaded the machine.
    monkeypatch.setattr(templates, "TEMPLATE_TIME_LIMIT_S", 60.0)
    source = "{% set s = 'x' * 262000 %}" + "".join(f"{{% set v{i} = s ~ {i} %}}" for i in range(800)) + "{{ v1 }}"
    with pytest.raises(TemplateRenderError, match="template for message uses more than 64 MB of memory"):
        render(source, CONTEXT, field="message")


def test_the_limits_leave_ordinary_templates_alone() -> None:
    source = ("{% for tag in ['a', 'b'] %}{{ tag | upper }}{% if not loop.last %}, {% endif %}{% endfor %}"
              " {{ '%s has %d' % (client.firstName, 2) }} {{ '{}!'.format(job.title) }}"
              " {{ (range(3) | list) + [3] }} {{ 2 ** 10 }} {{ 'ab' * 2 }} {{ job.title ~ '.' }}"
              " {{ range(10000) | sum }} {{ ['x', 'y'] | join('-') }}")
    assert render(source, CONTEXT, field="message") == (
        "A, B Maria has 2 Replace faucet! [0, 1, 2, 3] 1024 abab Replace faucet. 49995000 x-y")
    assert render("<b>{{ client.firstName ~ '<' }}</b>", CONTEXT, field="html", html=True) == "<b>Maria&lt;</b>"
    with pytest.raises(TemplateRenderError, match="template for message asks range"):  # one past the limit
        render("{{ range(10001) | sum }}", CONTEXT, field="message")
