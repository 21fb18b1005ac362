"""Herald's settings: one object, built from the environment once per process.

Nothing outside ``config/`` reads ``os.environ``; processes build a
:class:`Settings` at start and pass it down.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from config.embedded_layout import EmbeddedLayout
from config.errors import HeraldConfigError


def redact_url(url: str | None) -> str:
    """Return ``url`` with any password replaced, safe for logs and pages."""
    if not url:
        return ""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise HeraldConfigError(f"{name} must be an integer, got {raw!r}") from None


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise HeraldConfigError(f"{name} must be a number, got {raw!r}") from None


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise HeraldConfigError(f"{name} must be true or false, got {raw!r}")


@dataclass(frozen=True)
class Settings:
    """Everything a Herald process needs to know about its environment.

    With neither ``HERALD_DATABASE_URL`` nor ``HERALD_REDIS_URL`` set,
    ``embedded`` is true and the URLs point at the servers ``herald up`` runs
    under ``data_dir`` (see :mod:`config.embedded_layout`).
    """

    database_url: str = field(repr=False)
    redis_url: str = field(repr=False)
    embedded: bool = True
    data_dir: Path = Path(".herald").resolve()
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = 8080
    log_level: str = "INFO"
    log_format: str = "auto"  # auto | json | console
    worker_processes: int = 1
    worker_threads: int = 8
    # How long an idle Dramatiq consumer waits for a wake-up before polling.
    worker_timeout_ms: int = 1000
    dispatch_batch_size: int = 200
    sweep_interval_s: float = 5.0
    # Work claimed but not finished within the lease is picked up again.
    lease_s: float = 30.0
    heartbeat_interval_s: float = 5.0
    # Which provider delivers each channel; "capture" stores and sends nothing.
    email_provider: str = "capture"  # capture | smtp | mailgun
    sms_provider: str = "capture"  # capture | telnyx | twilio
    # Messages per channel to one recipient per window ("5/1h"; "0": no limit).
    recipient_limit: str = "5/1h"
    email_from: str = "Herald <herald@localhost>"
    sms_from: str = ""
    # Outbound HTTP (providers, webhooks): seconds for the whole request.
    http_timeout_s: float = 10.0
    smtp_host: str = "localhost"
    smtp_port: int = 25
    smtp_username: str = ""
    smtp_password: str = field(default="", repr=False)
    smtp_starttls: bool = False
    smtp_tls: bool = False
    mailgun_base_url: str = "https://api.mailgun.net"
    mailgun_domain: str = ""
    mailgun_api_key: str = field(default="", repr=False)
    telnyx_base_url: str = "https://api.telnyx.com"
    telnyx_api_key: str = field(default="", repr=False)
    twilio_base_url: str = "https://api.twilio.com"
    twilio_account_sid: str = ""
    twilio_auth_token: str = field(default="", repr=False)
    # Webhook steps: signing key, allowed hosts (empty: any public host), and
    # whether loopback, link-local and private addresses may be called.
    webhook_signing_secret: str = field(default="", repr=False)
    webhook_allowlist: tuple[str, ...] = ()
    webhook_allow_private: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        database_url = env.get("HERALD_DATABASE_URL") or None
        redis_url = env.get("HERALD_REDIS_URL") or None
        if (database_url is None) != (redis_url is None):
            raise HeraldConfigError(
                "set both HERALD_DATABASE_URL and HERALD_REDIS_URL, or neither "
                "(Herald then runs its own embedded servers)"
            )
        layout = EmbeddedLayout.for_dir(Path(env.get("HERALD_DATA_DIR") or ".herald"))
        return cls(
            database_url=database_url or layout.database_url,
            redis_url=redis_url or layout.redis_url,
            embedded=database_url is None,
            data_dir=layout.data_dir,
            dashboard_host=env.get("HERALD_DASHBOARD_HOST") or "127.0.0.1",
            dashboard_port=_int(env, "HERALD_DASHBOARD_PORT", 8080),
            log_level=(env.get("HERALD_LOG_LEVEL") or "INFO").upper(),
            log_format=env.get("HERALD_LOG_FORMAT") or "auto",
            worker_processes=_int(env, "HERALD_WORKER_PROCESSES", 1),
            worker_threads=_int(env, "HERALD_WORKER_THREADS", 8),
            worker_timeout_ms=_int(env, "HERALD_WORKER_TIMEOUT_MS", 1000),
            dispatch_batch_size=_int(env, "HERALD_DISPATCH_BATCH_SIZE", 200),
            sweep_interval_s=_float(env, "HERALD_SWEEP_INTERVAL", 5.0),
            lease_s=_float(env, "HERALD_LEASE", 30.0),
            heartbeat_interval_s=_float(env, "HERALD_HEARTBEAT_INTERVAL", 5.0),
            email_provider=env.get("HERALD_EMAIL_PROVIDER") or "capture",
            sms_provider=env.get("HERALD_SMS_PROVIDER") or "capture",
            recipient_limit=env.get("HERALD_RECIPIENT_LIMIT") or "5/1h",
            email_from=env.get("HERALD_EMAIL_FROM") or "Herald <herald@localhost>",
            sms_from=env.get("HERALD_SMS_FROM") or "",
            http_timeout_s=_float(env, "HERALD_HTTP_TIMEOUT", 10.0),
            smtp_host=env.get("HERALD_SMTP_HOST") or "localhost",
            smtp_port=_int(env, "HERALD_SMTP_PORT", 25),
            smtp_username=env.get("HERALD_SMTP_USERNAME") or "",
            smtp_password=env.get("HERALD_SMTP_PASSWORD") or "",
            smtp_starttls=_bool(env, "HERALD_SMTP_STARTTLS", False),
            smtp_tls=_bool(env, "HERALD_SMTP_TLS", False),
            mailgun_base_url=env.get("HERALD_MAILGUN_BASE_URL") or "https://api.mailgun.net",
            mailgun_domain=env.get("HERALD_MAILGUN_DOMAIN") or "",
            mailgun_api_key=env.get("HERALD_MAILGUN_API_KEY") or "",
            telnyx_base_url=env.get("HERALD_TELNYX_BASE_URL") or "https://api.telnyx.com",
            telnyx_api_key=env.get("HERALD_TELNYX_API_KEY") or "",
            twilio_base_url=env.get("HERALD_TWILIO_BASE_URL") or "https://api.twilio.com",
            twilio_account_sid=env.get("HERALD_TWILIO_ACCOUNT_SID") or "",
            twilio_auth_token=env.get("HERALD_TWILIO_AUTH_TOKEN") or "",
            webhook_signing_secret=env.get("HERALD_WEBHOOK_SIGNING_SECRET") or "",
            webhook_allowlist=tuple(
                host.strip() for host in (env.get("HERALD_WEBHOOK_ALLOWLIST") or "").split(",")
                if host.strip()
            ),
            webhook_allow_private=_bool(env, "HERALD_WEBHOOK_ALLOW_PRIVATE", False),
        )

    @property
    def layout(self) -> EmbeddedLayout:
        return EmbeddedLayout.for_dir(self.data_dir)

    def provider_for(self, channel: str) -> str:
        return {"email": self.email_provider, "sms": self.sms_provider}[channel]

    def replace(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

    def child_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for a child process that must see these settings."""
        env = dict(os.environ if base is None else base)
        env["HERALD_DATA_DIR"] = str(self.data_dir)
        if not self.embedded:
            env["HERALD_DATABASE_URL"] = self.database_url
            env["HERALD_REDIS_URL"] = self.redis_url
        env["HERALD_DASHBOARD_PORT"] = str(self.dashboard_port)
        env["HERALD_DASHBOARD_HOST"] = self.dashboard_host
        return env



def export_worker_settings(settings: Settings) -> None:
    """Dramatiq reads its worker timeout from the environment when it is imported."""
    os.environ["dramatiq_worker_timeout"] = str(settings.worker_timeout_ms)


@functools.lru_cache(maxsize=1)
def current() -> Settings:
    """This process's settings, built from the environment on first use."""
    return Settings.from_env()


def set_for_process(**values: str) -> None:
    """Record command-line choices (``--data-dir``, ``--port``) in the environment,
    before :func:`current` first runs, so this process and its children see them."""
    names = {"data_dir": "HERALD_DATA_DIR", "dashboard_port": "HERALD_DASHBOARD_PORT",
             "dashboard_host": "HERALD_DASHBOARD_HOST"}
    for key, value in values.items():
        os.environ[names[key]] = value
    current.cache_clear()
