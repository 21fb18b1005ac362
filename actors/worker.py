"""The worker's entry point (`dramatiq actors.worker`, run by `herald worker`):
the process's settings, its logging and the broker, then every actor on it."""

import asyncio
import os

import uvloop

from actors import email, enrich, match, records, sms, webhook  # noqa: F401  (they declare the actors)
from actors.broker import declare_actors, setup_broker
from actors.metrics_dir import MULTIPROC_VARIABLE
from config.logging import configure_logging
from config.settings import current

# The actors' event loop (Dramatiq's AsyncIO middleware makes it from the policy):
# libuv's, which spends less CPU per socket operation than asyncio's own.
asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
configure_logging(current(), process="worker")
_broker = setup_broker(current())
if os.environ.get(MULTIPROC_VARIABLE):
    # `herald worker` made the group's metrics directory (actors.metrics_dir): Dramatiq's
    # message metrics go there too, next to Herald's own.
    from actors.middleware.metrics import DramatiqMetrics

    _broker.add_middleware(DramatiqMetrics())
declare_actors(_broker)
