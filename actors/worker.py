"""The worker's entry point (`dramatiq actors.worker`, run by `herald worker`):
the process's settings, its logging and the broker, then every actor on it."""

from config.logging import configure_logging
from config.settings import current

from actors.broker import setup_broker  # isort: skip

configure_logging(current(), process="worker")
setup_broker(current())

# The actors register with the broker just set up.
from actors import email, enrich, match, records, sms, webhook  # noqa: E402, F401
