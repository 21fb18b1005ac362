"""draft_email and draft_sms: rendered and stored for a person to review, never sent."""

from __future__ import annotations

from typing import Any

from actors.actions.base import Action, Done, StepRun, register
from actors.model.actions import DRAFT_RECIPIENT as RECIPIENT
from actors.model.actions import DRAFT_SUBJECT as SUBJECT
from actors.model.actions import MESSAGE, DraftEmailSpec, DraftSmsSpec

INSERT_DRAFT = """
INSERT INTO herald.messages
    (tenant_id, run_id, step_id, channel, provider, idempotency_key, recipient, subject, body, status)
VALUES ($1, $2, $3, $4, 'draft', $5, $6, $7, $8, 'draft')
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING id
"""

# Who a draft is for when the rule names no recipient: the first related person.
PEOPLE = ("patient", "client", "contact", "customer")


def _recipient_from_context(context: dict[str, Any], column: str) -> str | None:
    for name in PEOPLE:
        person = context.get(name)
        if isinstance(person, dict) and person.get(column):
            return str(person[column])
    return None


class _Draft(Action):
    channel: str
    contact_column: str

    async def execute(self, run: StepRun) -> Done:
        recipient = run.render(RECIPIENT) or _recipient_from_context(run.context, self.contact_column)
        subject = run.render(SUBJECT)
        body = run.render(MESSAGE) or ""
        # Everything else the rule passed along (e.g. patientId) is kept with the draft.
        for key, value in run.config.items():
            if key not in ("actionType", "recipient", "to", "subject", "message", "body", "text"):
                run.rendered[key] = run.render_object(value, key)
        if run.preview:  # rendered, not stored
            return Done({"preview": True, "recipient": recipient})
        step = run.step
        draft_id = await run.conn.fetchval(
            INSERT_DRAFT, step["tenant_id"], step["run_id"], step["id"], self.channel,
            run.idempotency_key, recipient, subject, body,
        )
        return Done({"draft_id": draft_id, "recipient": recipient})


@register
class DraftEmail(DraftEmailSpec, _Draft):
    channel = "email"
    contact_column = "email"


@register
class DraftSms(DraftSmsSpec, _Draft):
    channel = "sms"
    contact_column = "phone"
