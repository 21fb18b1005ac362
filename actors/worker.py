"""The worker's entry point (`dramatiq actors.worker`, run by `herald worker`):
the process's settings, its logging and the broker, then every actor on it."""

import asyncio

import uvloop

from actors import email, enrich, match, records, sms, webhook  # noqa: F401  (they declare the actors)
from actors.broker import declare_actors, setup_broker
from config.logging import configure_logging
from config.settings import current

# The actors' event loop (Dramatiq's AsyncIO middleware makes it from the policy):
# libuv's, which spends less CPU per socket operation than asyncio's own.
asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
configure_logging(current(), process="worker")
declare_actors(setup_broker(current()))
