"""Handing a message to a provider at most once per idempotency key.

The message row is written (*sending*) before the provider is called and
updated after: with a failure's status here, with the provider's answer in
the statement that records the step sent. A second attempt at the same step
finds the row: delivered means done, *retrying* (the last attempt failed
transiently) means try again with the same key, and *sending* or *unknown*
means an earlier attempt may have reached the provider: sent again with the
same key only when the row says the provider deduplicates by it
(``resend_safe``), never blindly.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from actors.actions.base import Delivered, Done, StepRun
from actors.metrics import metered
from actors.model.rate_limits import RateLimit
from actors.providers import OutboundMessage, ProviderResult
from actors.rate_limits import admit, lock, lock_key
from config.errors import DeliveryUnknownError, StepError

_INSERT_MESSAGE = """
INSERT INTO herald.messages
    (tenant_id, run_id, step_id, channel, provider, idempotency_key, recipient, subject, body,
     html_body, status, resend_safe)
SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'sending', $11{recipient_lock}
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING id
"""
INSERT_MESSAGE = _INSERT_MESSAGE.format(recipient_lock="")
# Under a recipient limit: the statement that writes the row takes the
# recipient's lock first ($12: rate_limits.lock_key), a round trip fewer than a
# statement of its own; the count (rate_limits.admit) follows.
INSERT_MESSAGE_LOCKED = _INSERT_MESSAGE.format(recipient_lock=f" FROM ({lock('$12')}) AS recipient_lock")

# Only a row left by a transient failure (or, where the provider deduplicates
# by the key, by an attempt of unknown outcome) may be sent again. The row
# records what this attempt sends: after a fix and retry, the new text.
CLAIM_MESSAGE = """
UPDATE herald.messages
SET status = 'sending', resend_safe = $2, recipient = $3, subject = $4, body = $5, html_body = $6
WHERE idempotency_key = $1 AND (status = 'retrying' OR ($2 AND status IN ('sending', 'unknown')))
RETURNING id
"""

EXISTING = "SELECT id, status, provider_message_id FROM herald.messages WHERE idempotency_key = $1"

# A message row marked with an attempt's outcome: {id}, {status}, {provider_id}.
MARK_MESSAGE = ("UPDATE herald.messages SET status = {status},"
                " provider_message_id = coalesce({provider_id}, provider_message_id) WHERE id = {id}")
SET_STATUS = MARK_MESSAGE.format(id="$1", status="$2", provider_id="$3")

DELIVERED = ("sent", "captured")

Send = Callable[[OutboundMessage], Awaitable[ProviderResult]]


async def deliver(
    run: StepRun, message: OutboundMessage, provider_name: str, send: Send, *, idempotent: bool = False,
    limit: RateLimit | None = None,
) -> Done:
    """Record ``message`` and send it once; the step's outcome follows the provider's answer.

    No database connection is held while the provider is called: a slow
    provider does not starve the pool. ``idempotent``: the provider (or a
    webhook receiver) drops repeats of the key, so an attempt of unknown
    outcome is sent again with the same key, within the retry budget, rather
    than parked for a person.
    """
    if run.preview:
        return preview(message)
    step = run.step
    async with run.pool.acquire() as conn:
        row = (step["tenant_id"], step["run_id"], step["id"], message.channel, provider_name,
               message.idempotency_key, message.recipient, message.subject, message.body, message.html_body,
               idempotent)
        if limit is None or limit.off:
            message_id = await conn.fetchval(INSERT_MESSAGE, *row)  # None: a row with this key exists
        else:
            async with conn.transaction():
                message_id = await conn.fetchval(
                    INSERT_MESSAGE_LOCKED, *row, lock_key(step["tenant_id"], message.channel, message.recipient))
                # A new message counts against the recipient's limit (over it, the insert is
                # rolled back); a resend of one does not.
                if message_id is not None:
                    await admit(conn, limit, step["tenant_id"], message.channel, message.recipient, message_id)
        message_id = message_id or await conn.fetchval(
            CLAIM_MESSAGE, message.idempotency_key, idempotent, message.recipient, message.subject, message.body,
            message.html_body)
        if message_id is None:
            existing = await conn.fetchrow(EXISTING, message.idempotency_key)
            if existing["status"] in DELIVERED:
                # Delivered by an earlier attempt whose bookkeeping was lost.
                return Done({"already_delivered": True, "provider_message_id": existing["provider_message_id"]})
            if existing["status"] == "failed":
                raise StepError(f"the provider refused message {message.idempotency_key} before")
            raise DeliveryUnknownError(
                f"message {message.idempotency_key} was handed to the provider before and its outcome"
                " is unknown; not sending it again"
            )
    # Cancelled or crashed mid-call, the row stays *sending*: whether it went out
    # is unknown, and the sweeper settles it once this worker is gone.
    try:
        result = await metered(send, message, provider_name, run.since_commit_s())
    except DeliveryUnknownError as exc:
        if idempotent:
            # The provider drops a repeated key: sending again is how to find out.
            await _set_status(run, message_id, "retrying")
            raise StepError(f"{exc}; sending again with the same idempotency key", permanent=False) from None
        await _set_status(run, message_id, "unknown")
        raise
    except StepError as exc:
        await _set_status(run, message_id, "failed" if exc.permanent else "retrying")
        raise
    # The row is marked with the answer by the statement that records the step sent
    # (actors/steps.py STEP_SENT): one round trip, and the two agree.
    return Done({"status": result.status, "provider_message_id": result.provider_message_id,
                 **result.response}, Delivered(message_id, result.status, result.provider_message_id))


def preview(message: OutboundMessage) -> Done:
    """What a step in preview mode answers instead of sending: the message it would
    hand to the provider. Nothing is recorded and no provider is called."""
    return Done({"preview": True, "channel": message.channel, "recipient": message.recipient,
                 **({"subject": message.subject} if message.subject is not None else {}),
                 "body": message.body, **({"html_body": message.html_body} if message.html_body is not None else {})})


async def _set_status(run: StepRun, message_id: int, status: str, provider_message_id: str | None = None) -> None:
    await run.pool.execute(SET_STATUS, message_id, status, provider_message_id)
