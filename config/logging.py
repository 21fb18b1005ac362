"""structlog, configured once per process.

Standard-library loggers (dramatiq, aiohttp, asyncpg) go through the same
processors, so every line is JSON when not on a terminal and carries the
context variables bound per message or request (``run_id``, ``event_id``...,
see :mod:`config.log_context`). HERALD_LOG_LEVEL sets the root level and
HERALD_LOG_LEVELS single loggers' (``asyncpg=WARNING,actors.email=DEBUG``).
"""

from __future__ import annotations

import logging
import sys

import structlog

from config.errors import HeraldConfigError
from config.settings import (
    LOG_FORMATS,
    LOG_LEVELS,
    VARIABLES,
    Settings,
    parse_log_levels,
)

_configured = False


def configure_logging(settings: Settings, *, process: str) -> None:
    """Configure structlog and the standard library; safe to call twice.

    :meth:`Settings.from_env` has checked the level and format already; a
    ``Settings`` built in code is checked here, with the same one-line error
    rather than a traceback from the standard library.
    """
    global _configured
    level = settings.log_level.upper()
    if level not in LOG_LEVELS:
        raise HeraldConfigError(
            f"{VARIABLES['log_level']} must be one of {', '.join(LOG_LEVELS)} (got {settings.log_level!r})")
    if settings.log_format not in LOG_FORMATS:
        raise HeraldConfigError(
            f"{VARIABLES['log_format']} must be one of {', '.join(LOG_FORMATS)} (got {settings.log_format!r})")
    per_logger = parse_log_levels(settings.log_levels)  # HeraldConfigError naming HERALD_LOG_LEVELS
    if _configured:
        return
    _configured = True

    as_json = settings.log_format == "json" or (
        settings.log_format == "auto" and not sys.stderr.isatty()
    )
    def add_process(_logger: object, _method: str, event: dict[str, object]) -> dict[str, object]:
        event.setdefault("process", process)
        return event

    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        add_process,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        # A line below its logger's level is dropped before any processor runs: the
        # contexts merged, the timestamp and the rest cost CPU on every message.
        processors=[structlog.stdlib.filter_by_level, *shared,
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if as_json else lambda _l, _m, e: e,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's access log repeats what the request middleware logs.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    apply_log_levels(per_logger)


def apply_log_levels(levels: dict[str, str]) -> None:
    """Give each named logger its own level (HERALD_LOG_LEVELS), after the defaults
    above so that it can override them: ``asyncpg=WARNING`` quietens one library,
    ``actors.email=DEBUG`` opens one module up while the rest stays at the root level.
    Herald's loggers are named after their modules (``structlog.get_logger(__name__)``)."""
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
