"""The dashboard's workflows pages over a real database and Redis: the list and
/api/workflows, one workflow and its versions, enable/disable, editing and
uploading (errors at the field at fault, the text kept), the test runner (which
sends and writes nothing) and captured messages, each within the viewer's tenants."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from html import unescape
from typing import Any

import aiohttp
import asyncpg
import pytest
import redis
from aiohttp.test_utils import TestClient

from config.settings import Settings
from daemon.demo import demo_workflow, load_demo
from dashboard.app import create_app
from tests.dashboard_support import csrf_of, make_user, sign_in

Client = Callable[[str], Awaitable[tuple[TestClient, str]]]


@pytest.fixture
async def signed_in(settings: Settings, aiohttp_client: Any, conn: asyncpg.Connection) -> Client:
    """A client signed in as ``email`` (made before with make_user), and its CSRF token."""
    await load_demo(conn)

    async def as_user(email: str) -> tuple[TestClient, str]:
        client = await aiohttp_client(create_app(settings))
        return client, await sign_in(client, email)

    return as_user


async def workflow_of(conn: asyncpg.Connection, tenant: str) -> str:
    return str(await conn.fetchval("SELECT id FROM herald.workflows WHERE tenant_id = $1", tenant))


async def add_run(conn: asyncpg.Connection, tenant: str, job_id: int, status: str) -> int:
    """A run of the tenant's workflow for a change of ``job_id``."""
    await conn.execute("UPDATE jobs SET scheduled_at = coalesce(scheduled_at, now()) + interval '1 second'"
                       " WHERE id = $1", job_id)
    event = await conn.fetchval("SELECT max(id) FROM herald.events")
    return int(await conn.fetchval(
        "INSERT INTO herald.runs (tenant_id, workflow_id, event_id, status, workflow_version)"
        " VALUES ($1, $2, $3, $4, 1) RETURNING id", tenant, await workflow_of(conn, tenant), event, status))


async def add_captured(conn: asyncpg.Connection, tenant: str, job_id: int, recipient: str, subject: str) -> None:
    run_id = await add_run(conn, tenant, job_id, "completed")
    step_id = await conn.fetchval(
        "INSERT INTO herald.steps (run_id, tenant_id, position, step_key, action, queue, config, status)"
        " VALUES ($1, $2, 0, 'step-1', 'email', 'email', '{}', 'sent') RETURNING id", run_id, tenant)
    await conn.execute(
        "INSERT INTO herald.messages (tenant_id, run_id, step_id, channel, provider, idempotency_key, recipient,"
        " subject, body, status) VALUES ($1, $2, $3, 'email', 'capture', $4, $5, $6, 'Dear <b>you</b>', 'captured')",
        tenant, run_id, step_id, f"key-{run_id}", recipient, subject)


async def form_post(client: TestClient, path: str, csrf: str, **fields: str) -> Any:
    return await client.post(path, data={"csrf_token": csrf, **fields}, allow_redirects=False)


# -- list -------------------------------------------------------------------------------


async def test_list_shows_only_the_scope_with_version_state_and_success(
    signed_in: Client, conn: asyncpg.Connection,
) -> None:
    await make_user(conn, "viewer1@example.com", "viewer", ("1",))
    await add_run(conn, "1", 1, "completed")
    await add_run(conn, "1", 2, "failed")
    await add_run(conn, "1", 3, "skipped")  # the workflow did not apply: no run
    await add_run(conn, "2", 4, "failed")
    await conn.execute("UPDATE herald.workflows SET is_active = false WHERE tenant_id = '1'")
    client, _ = await signed_in("viewer1@example.com")

    api = await (await client.get("/api/workflows")).json()
    assert [(w["tenant_id"], w["name"]) for w in api["workflows"]] == [("1", "Job Completed")]
    one = api["workflows"][0]
    assert (one["version"], one["is_active"], one["runs_7d"], one["success_rate"]) == (1, False, 2, 0.5)
    assert one["last_run_at"] is not None

    html = await (await client.get("/workflows")).text()
    assert f'href="/workflows/{await workflow_of(conn, "1")}"' in html
    assert await workflow_of(conn, "2") not in html
    assert "50.0 %" in html and "disabled" in html
    assert (await client.get("/api/workflows", params={"tenant": "2"})).status == 404


# -- one workflow ----------------------------------------------------------------------


async def test_workflow_page_versions_and_tenant_isolation(signed_in: Client, conn: asyncpg.Connection) -> None:
    await make_user(conn, "viewer1@example.com", "viewer", ("1",))
    client, _ = await signed_in("viewer1@example.com")
    mine, theirs = await workflow_of(conn, "1"), await workflow_of(conn, "2")
    changed = demo_workflow()
    changed["steps"][0]["config"]["subject"] = "Done <script>alert(1)</script> {{job.title}}"
    await conn.execute("SELECT set_config('herald.saved_by', 'ops@example.com', false)")
    await conn.execute("UPDATE herald.workflows SET definition = $2 WHERE id = $1::uuid", mine, changed)

    page = await client.get(f"/workflows/{mine}")
    html = await page.text()
    assert page.status == 200
    assert "Done &lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>alert" not in html
    assert "ops@example.com" in html and f"/workflows/{mine}?version=1" in html
    assert "Disable" not in html  # a viewer has no buttons
    old = await (await client.get(f"/workflows/{mine}", params={"version": "1"})).text()
    assert "Job Completed - {{job.title}}" in old and "not the current one" in old
    assert (await client.get(f"/workflows/{mine}", params={"version": "9"})).status == 404

    assert (await client.get(f"/workflows/{theirs}")).status == 404
    assert (await client.get("/workflows/not-a-uuid")).status == 400
    assert (await client.get("/workflows/00000000-0000-0000-0000-000000000000")).status == 404

    await conn.execute("UPDATE herald.workflows SET is_active = false, deleted_at = now() WHERE id = $1::uuid", mine)
    deleted = await client.get(f"/workflows/{mine}")
    assert deleted.status == 200 and "Deleted" in await deleted.text()


async def test_enable_disable_by_operator_audited_and_refused_to_support(
    signed_in: Client, conn: asyncpg.Connection,
) -> None:
    await make_user(conn, "op1@example.com", "operator", ("1",))
    await make_user(conn, "support1@example.com", "support", ("1",))
    mine, theirs = await workflow_of(conn, "1"), await workflow_of(conn, "2")
    support, support_csrf = await signed_in("support1@example.com")
    assert (await form_post(support, f"/workflows/{mine}/disable", support_csrf)).status == 403
    assert await conn.fetchval("SELECT is_active FROM herald.workflows WHERE id = $1::uuid", mine)

    operator, csrf = await signed_in("op1@example.com")
    page = await (await operator.get(f"/workflows/{mine}")).text()
    assert f'action="/workflows/{mine}/disable"' in page
    response = await form_post(operator, f"/workflows/{mine}/disable", csrf)
    assert response.status == 303
    assert not await conn.fetchval("SELECT is_active FROM herald.workflows WHERE id = $1::uuid", mine)
    response = await form_post(operator, f"/workflows/{mine}/enable", csrf)
    assert response.status == 303
    assert await conn.fetchval("SELECT is_active FROM herald.workflows WHERE id = $1::uuid", mine)
    audited = await conn.fetch("SELECT actor, action, target, tenant_id FROM herald.audit_log"
                               " WHERE action LIKE 'workflow.%' ORDER BY id")
    assert [(a["actor"], a["action"], a["target"], a["tenant_id"]) for a in audited] == [
        ("op1@example.com", "workflow.disable", mine, "1"), ("op1@example.com", "workflow.enable", mine, "1")]

    assert (await form_post(operator, f"/workflows/{theirs}/disable", csrf)).status == 404
    assert await conn.fetchval("SELECT is_active FROM herald.workflows WHERE id = $1::uuid", theirs)
    assert (await operator.post(f"/workflows/{mine}/disable", allow_redirects=False)).status == 403  # no CSRF


# -- editing and uploading ---------------------------------------------------------------


async def versions(conn: asyncpg.Connection, workflow_id: str) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM herald.workflow_versions WHERE workflow_id = $1::uuid",
                                   workflow_id))


async def test_an_invalid_edit_names_the_field_keeps_the_text_and_saves_nothing(
    signed_in: Client, conn: asyncpg.Connection,
) -> None:
    await make_user(conn, "op1@example.com", "operator", ("1",))
    client, csrf = await signed_in("op1@example.com")
    mine = await workflow_of(conn, "1")
    form = await (await client.get(f"/workflows/{mine}/edit")).text()
    assert "Job Completed - {{job.title}}" in form and 'enctype="multipart/form-data"' in form

    # A JSON syntax error: its line and column.
    broken = json.dumps(demo_workflow(), indent=2).replace('"steps": [', '"steps": [,', 1)
    response = await form_post(client, f"/workflows/{mine}/edit", csrf, definition=broken)
    html = await response.text()
    assert response.status == 400
    line = broken.split("\n").index(next(x for x in broken.split("\n") if '"steps": [,' in x)) + 1
    assert "not valid JSON" in html and f"line {line}, column" in html
    assert '"steps": [,' in unescape(html)  # the text as typed, kept

    # A definition the model refuses: the field path, and where it is in the text.
    invalid = demo_workflow()
    invalid["steps"][1]["config"]["actionType"] = "fax"
    text = json.dumps(invalid, indent=2) + "\n"
    response = await form_post(client, f"/workflows/{mine}/edit", csrf, definition=text)
    html = await response.text()
    assert response.status == 400
    assert "steps[1].config.actionType" in html and "unknown action" in html
    fax_line = text.split("\n").index(next(x for x in text.split("\n") if '"fax"' in x)) + 1
    assert f"line {fax_line}," in html and f'data-error-line="{fax_line}"' in html
    assert "&#34;fax&#34;" in html or "&quot;fax&quot;" in html  # kept in the textarea, escaped

    # A template reading a column the table lacks: refused unless forced.
    typo = demo_workflow()
    typo["steps"][0]["config"]["subject"] = "Done: {{ job.titel }}"
    response = await form_post(client, f"/workflows/{mine}/edit", csrf, definition=json.dumps(typo))
    html = await response.text()
    assert response.status == 400 and "steps[0].config.subject" in html and "titel" in html

    # Another workflow's id would save that other workflow: refused at the id.
    other = {**demo_workflow(), "id": "someone-else"}
    response = await form_post(client, f"/workflows/{mine}/edit", csrf, definition=json.dumps(other))
    assert response.status == 400 and "must stay" in await response.text()

    assert await versions(conn, mine) == 1
    assert await conn.fetchval("SELECT count(*) FROM herald.workflows") == 2
    assert await conn.fetchval("SELECT count(*) FROM herald.audit_log WHERE action = 'workflow.save'") == 0


async def test_a_valid_edit_makes_the_next_version_saved_by_the_viewer(
    signed_in: Client, conn: asyncpg.Connection,
) -> None:
    await make_user(conn, "op1@example.com", "operator", ("1",))
    client, csrf = await signed_in("op1@example.com")
    mine = await workflow_of(conn, "1")
    changed = demo_workflow()
    changed["steps"][0]["config"]["subject"] = "All done: {{job.title}}"
    response = await form_post(client, f"/workflows/{mine}/edit", csrf, definition=json.dumps(changed))
    assert response.status == 303 and response.headers["Location"] == f"/workflows/{mine}?saved=2&was=1"
    row = await conn.fetchrow("SELECT version, saved_by, definition FROM herald.workflow_versions"
                              " WHERE workflow_id = $1::uuid ORDER BY version DESC LIMIT 1", mine)
    assert (row["version"], row["saved_by"]) == (2, "op1@example.com")
    assert row["definition"]["steps"][0]["config"]["subject"] == "All done: {{job.title}}"
    audit = await conn.fetchrow("SELECT actor, target, tenant_id, detail FROM herald.audit_log"
                                " WHERE action = 'workflow.save'")
    assert (audit["actor"], audit["target"], audit["tenant_id"]) == ("op1@example.com", mine, "1")
    detail = audit["detail"]
    assert (json.loads(detail) if isinstance(detail, str) else detail)["version"] == 2
    page = await (await client.get(response.headers["Location"])).text()
    assert "Saved as version 2 (was 1)" in page

    forced = demo_workflow()
    forced["steps"][0]["config"]["subject"] = "Done: {{ job.titel }}"
    response = await form_post(client, f"/workflows/{mine}/edit", csrf, definition=json.dumps(forced), force="1")
    assert response.status == 303
    page = await (await client.get(response.headers["Location"])).text()
    assert "Warnings" in page and "job has no column" in page and "titel" in page
    assert await versions(conn, mine) == 3


async def test_upload_a_new_workflow_only_for_the_viewers_tenants(
    signed_in: Client, conn: asyncpg.Connection,
) -> None:
    await make_user(conn, "op1@example.com", "operator", ("1",))
    await make_user(conn, "viewer1@example.com", "viewer", ("1",))
    client, csrf = await signed_in("op1@example.com")
    new = {"id": "job-done", "name": "Job done", "trigger_type": "job_status_changed",
           "trigger_conditions": {"new_status": "completed"},
           "steps": [{"id": "email", "type": "action", "config": {
               "actionType": "email", "recipient": "{{client.email}}", "subject": "Done: {{ job.title }}",
               "message": "Dear {{client.firstName}}, all done."}}]}
    form = await (await client.get("/workflows/new")).text()
    assert '<option value="1"' in form and '<option value="2"' not in form

    # As a file (multipart), for tenant 1.
    data = aiohttp.FormData()
    data.add_field("csrf_token", csrf)
    data.add_field("tenant", "1")
    data.add_field("definition", "")
    data.add_field("file", json.dumps(new).encode(), filename="job-done.workflow.json",
                   content_type="application/json")
    response = await client.post("/workflows/new", data=data, allow_redirects=False)
    assert response.status == 303, await response.text()
    saved = await conn.fetchrow("SELECT id, tenant_id, version, is_active FROM herald.workflows"
                                " WHERE source_id = 'job-done'")
    assert (saved["tenant_id"], saved["version"], saved["is_active"]) == ("1", 1, True)
    assert response.headers["Location"] == f"/workflows/{saved['id']}?saved=1&was="
    assert await conn.fetchval("SELECT saved_by FROM herald.workflow_versions WHERE workflow_id = $1",
                               saved["id"]) == "op1@example.com"

    # Not for tenant 2, neither new nor by editing tenant 2's.
    again = {**new, "id": "job-done-2", "name": "Job done 2"}
    response = await form_post(client, "/workflows/new", csrf, tenant="2", definition=json.dumps(again))
    assert response.status == 403
    theirs = await workflow_of(conn, "2")
    response = await form_post(client, f"/workflows/{theirs}/edit", csrf, definition=json.dumps(demo_workflow()))
    assert response.status == 404
    assert await conn.fetchval("SELECT count(*) FROM herald.workflows WHERE tenant_id = '2'") == 1
    assert await versions(conn, theirs) == 1

    # Too big: refused, nothing saved.
    response = await form_post(client, "/workflows/new", csrf, tenant="1", definition=" " * (300 * 1024))
    assert response.status == 400 and "larger than 256 KB" in await response.text()

    # A viewer may not upload.
    viewer, viewer_csrf = await signed_in("viewer1@example.com")
    assert (await viewer.get("/workflows/new")).status == 403
    assert (await form_post(viewer, "/workflows/new", viewer_csrf, tenant="1", definition=json.dumps(again))).status == 403


# -- the test runner ----------------------------------------------------------------------


def redis_state(url: str) -> dict[str, int]:
    """Every Redis key and its length: queues (lists), delayed and dead-letter sets, hashes."""
    client = redis.Redis.from_url(url)
    try:
        state = {}
        for key in client.scan_iter("*"):
            kind = client.type(key).decode()
            length = {"list": client.llen, "zset": client.zcard, "hash": client.hlen, "set": client.scard}.get(kind)
            state[key.decode()] = length(key) if length else -1
        return state
    finally:
        client.close()


async def herald_counts(conn: asyncpg.Connection) -> tuple[int, ...]:
    row = await conn.fetchrow(
        "SELECT (SELECT count(*) FROM herald.runs), (SELECT count(*) FROM herald.steps),"
        " (SELECT count(*) FROM herald.messages), (SELECT count(*) FROM herald.events),"
        " (SELECT count(*) FROM herald.workflow_versions)")
    return tuple(row)


async def test_the_test_runner_shows_the_match_and_steps_and_sends_nothing(
    signed_in: Client, conn: asyncpg.Connection, redis_url: str,
) -> None:
    await make_user(conn, "op1@example.com", "operator", ("1",))
    await make_user(conn, "support1@example.com", "support", ("1",))
    client, csrf = await signed_in("op1@example.com")
    mine, theirs = await workflow_of(conn, "1"), await workflow_of(conn, "2")
    await add_run(conn, "1", 1, "completed")  # job 1 changed lately: offered as a record
    form = await (await client.get(f"/workflows/{mine}/test")).text()
    assert '<option value="1"' in form and "public.jobs" in form

    before, queues = await herald_counts(conn), redis_state(redis_url)
    response = await form_post(client, f"/workflows/{mine}/test", csrf, mode="record", record_id="1",
                               changes="status=in_progress:completed")
    html = await response.text()
    assert response.status == 200, html
    assert "Nothing was sent." in html and "matched" in html and "new.status equals" in html
    assert "maria.lopez@example.com" in html and "Job Completed - Replace kitchen faucet" in html
    assert "+15550101001" in html and "Job Replace kitchen faucet completed. Thank you!" in html
    assert html.count('class="card wf-step"') == 2

    not_matched = await (await form_post(client, f"/workflows/{mine}/test", csrf, mode="record",
                                         record_pick="1", changes="status=new:scheduled")).text()
    assert "did not match" in not_matched and "was &#39;scheduled&#39;" in not_matched.replace("&#x27;", "&#39;")

    sample = await form_post(client, f"/workflows/{mine}/test", csrf, mode="sample",
                             sample=json.dumps({"id": 9, "title": "Fix <sink>", "status": "completed"}),
                             sample_changes=json.dumps({"status": {"from": "in_progress", "to": "completed"}}),
                             sample_related=json.dumps({"client": {"first_name": "Ann", "email": "ann@example.com",
                                                                   "phone": "+15550109999"}}))
    html = await sample.text()
    assert sample.status == 200, html
    assert "Nothing was sent." in html and "ann@example.com" in html and "Fix &lt;sink&gt;" in html

    bad_sample = await form_post(client, f"/workflows/{mine}/test", csrf, mode="sample", sample="{\"id\": 1,",
                                 sample_changes="")
    text = await bad_sample.text()
    assert bad_sample.status == 400 and "not valid JSON" in text and "line 1" in text
    assert "{&#34;id&#34;: 1," in text or "{&quot;id&quot;: 1," in text  # kept

    other_tenant = await form_post(client, f"/workflows/{mine}/test", csrf, mode="record", record_id="4")
    refused = await other_tenant.text()
    assert other_tenant.status == 400 and "public.jobs has no row id = &#39;4&#39;" in refused, refused
    assert "tenant 2" not in refused  # another tenant's record looks like no record at all

    assert await herald_counts(conn) == before
    assert redis_state(redis_url) == queues
    audited = await conn.fetchval("SELECT count(*) FROM herald.audit_log WHERE action = 'workflow.test'")
    assert audited == 3  # the runs that ran (not the refused ones)

    assert (await form_post(client, f"/workflows/{theirs}/test", csrf, mode="record", record_id="4")).status == 404
    support, support_csrf = await signed_in("support1@example.com")
    assert (await support.get(f"/workflows/{mine}/test")).status == 403
    assert (await form_post(support, f"/workflows/{mine}/test", support_csrf, mode="record",
                            record_id="1")).status == 403


# -- captured messages -----------------------------------------------------------------------


async def test_captured_messages_per_scope_newest_first(signed_in: Client, conn: asyncpg.Connection) -> None:
    await make_user(conn, "viewer1@example.com", "viewer", ("1",))
    await make_user(conn, "admin@example.com", "admin")
    await add_captured(conn, "1", 1, "maria.lopez@example.com", "First <b>one</b>")
    await add_captured(conn, "1", 2, "james.carter@example.com", "Second")
    await add_captured(conn, "2", 4, "tom.becker@example.com", "Tenant two's")
    client, _ = await signed_in("viewer1@example.com")
    html = await (await client.get("/workflows/captured")).text()
    assert "james.carter@example.com" in html and "maria.lopez@example.com" in html
    assert html.index("james.carter@example.com") < html.index("maria.lopez@example.com")
    assert "tom.becker@example.com" not in html
    assert "First &lt;b&gt;one&lt;/b&gt;" in html and "Dear &lt;b&gt;you&lt;/b&gt;" in html
    paged = await (await client.get("/workflows/captured", params={"limit": "1"})).text()
    assert "james.carter@example.com" in paged and "maria.lopez" not in paged
    older = re.search(r'href="\?before=(\d+)&amp;limit=1"', paged)
    assert older is not None
    second = await (await client.get("/workflows/captured", params={"limit": "1", "before": older.group(1)})).text()
    assert "maria.lopez@example.com" in second
    assert (await client.get("/workflows/captured", params={"tenant": "2"})).status == 404

    admin, _ = await signed_in("admin@example.com")
    everything = await (await admin.get("/workflows/captured")).text()
    assert "tom.becker@example.com" in everything and "maria.lopez@example.com" in everything
    assert csrf_of(everything)
