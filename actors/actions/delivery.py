"""Handing a message to a provider at most once per idempotency key.

The message row is written (*sending*) before the provider is called and
updated after. A second attempt at the same step finds the row: delivered
means done, *retrying* (the last attempt failed transiently) means try again
with the same key, and *sending* or *unknown* means an earlier attempt may
have reached the provider, so it is never sent blindly again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from actors.actions.base import Done, StepRun
from actors.providers import OutboundMessage, ProviderResult
from actors.rate_limits import RateLimit, admit
from config.errors import DeliveryUnknownError, StepError

INSERT_MESSAGE = """
INSERT INTO herald.messages
    (tenant_id, run_id, step_id, channel, provider, idempotency_key, recipient, subject, body,
     html_body, status)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'sending')
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING id
"""

# Only a row left by a transient failure may be tried again.
RETRY_MESSAGE = """
UPDATE herald.messages SET status = 'sending'
WHERE idempotency_key = $1 AND status = 'retrying'
RETURNING id
"""

EXISTING_ID = "SELECT id FROM herald.messages WHERE idempotency_key = $1"

EXISTING = "SELECT id, status, provider_message_id FROM herald.messages WHERE idempotency_key = $1"

# The provider deduplicates by key: an attempt of unknown outcome may be repeated.
RESEND_UNKNOWN = """
UPDATE herald.messages SET status = 'sending'
WHERE idempotency_key = $1 AND status IN ('sending', 'unknown')
RETURNING id
"""

SET_STATUS = "UPDATE herald.messages SET status = $2, provider_message_id = coalesce($3, provider_message_id) WHERE id = $1"

DELIVERED = ("sent", "captured")

Send = Callable[[OutboundMessage], Awaitable[ProviderResult]]


async def deliver(
    run: StepRun, message: OutboundMessage, provider_name: str, send: Send, *, idempotent: bool = False,
    limit: RateLimit | None = None,
) -> Done:
    """Record ``message`` and send it once; the step's outcome follows the provider's answer.

    ``idempotent``: the provider deduplicates by the key, so an earlier attempt
    of unknown outcome is repeated (with the same key) rather than parked.
    """
    conn = run.conn
    step = run.step
    message_id = None
    async with conn.transaction():
        if await conn.fetchval(EXISTING_ID, message.idempotency_key) is None:
            # A new message counts against the recipient's limit; a retry of one does not.
            if limit is not None:
                await admit(conn, limit, step["tenant_id"], message.channel, message.recipient)
            message_id = await conn.fetchval(
                INSERT_MESSAGE, step["tenant_id"], step["run_id"], step["id"], message.channel,
                provider_name, message.idempotency_key, message.recipient, message.subject, message.body,
                message.html_body,
            )
    message_id = message_id or await conn.fetchval(RETRY_MESSAGE, message.idempotency_key)
    if message_id is None and idempotent:
        message_id = await conn.fetchval(RESEND_UNKNOWN, message.idempotency_key)
    if message_id is None:
        existing = await conn.fetchrow(EXISTING, message.idempotency_key)
        if existing["status"] in DELIVERED:
            # Delivered by an earlier attempt whose bookkeeping was lost.
            return Done({"already_delivered": True, "provider_message_id": existing["provider_message_id"]})
        raise DeliveryUnknownError(
            f"message {message.idempotency_key} was handed to the provider before and its outcome"
            " is unknown; not sending it again"
        )
    try:
        result = await send(message)
    except DeliveryUnknownError:
        await conn.execute(SET_STATUS, message_id, "unknown", None)
        raise
    except StepError as exc:
        await conn.execute(SET_STATUS, message_id, "failed" if exc.permanent else "retrying", None)
        raise
    except BaseException:
        # Cancelled or crashed mid-call: whether it went out is unknown.
        await conn.execute(SET_STATUS, message_id, "unknown", None)
        raise
    await conn.execute(SET_STATUS, message_id, result.status, result.provider_message_id)
    return Done({"status": result.status, "provider_message_id": result.provider_message_id,
                 **result.response})
