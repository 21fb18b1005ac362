"""Herald's Dramatiq actors. The broker is imported first, then every actor,
so ``dramatiq actors`` starts a worker that serves them all."""

from actors import broker  # noqa: F401  (must come first: it sets the broker)
from actors import email, enrich, match, records, sms, webhook  # noqa: F401
