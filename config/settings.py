"""Herald's settings: one object, built from the environment once per process.

Nothing outside ``config/`` reads ``os.environ``; processes build a
:class:`Settings` at start and pass it down.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit, urlunsplit

from pydantic import AfterValidator, BeforeValidator, Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from config.embedded_layout import EmbeddedLayout
from config.errors import HeraldConfigError

EmailProvider = Literal["capture", "smtp", "mailgun"]
SmsProvider = Literal["capture", "telnyx", "twilio"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
LogFormat = Literal["auto", "json", "console"]
EMAIL_PROVIDERS: tuple[str, ...] = get_args(EmailProvider)
SMS_PROVIDERS: tuple[str, ...] = get_args(SmsProvider)
LOG_LEVELS: tuple[str, ...] = get_args(LogLevel)
LOG_FORMATS: tuple[str, ...] = get_args(LogFormat)


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


_RECIPIENT_LIMIT = re.compile(r"^\s*(\d+)\s*(?:/\s*(\d+(?:\.\d+)?)\s*([smhdw])?\s*)?$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}
_RECIPIENT_LIMIT_RULE = "look like '5/1h' (messages per window; s, m, h, d, w) or '0' (no limit)"


def parse_recipient_limit(text: str) -> tuple[int, dt.timedelta]:
    """HERALD_RECIPIENT_LIMIT: ``"5/1h"`` is 5 messages per hour, ``"5"`` per hour
    too, ``"0"`` no limit. Pure, so settings can check it without importing actors."""
    match = _RECIPIENT_LIMIT.match(text)
    window_s = float(match.group(2)) * _UNIT_S[match.group(3)] if match and match.group(2) else 3600.0
    if not match or window_s <= 0:
        raise HeraldConfigError(f"{VARIABLES['recipient_limit']} must {_RECIPIENT_LIMIT_RULE} (got {text!r})")
    return int(match.group(1)), dt.timedelta(seconds=window_s)


_LOGGER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*$")
_LOG_LEVELS_RULE = ("be a comma-separated list of logger=LEVEL (e.g. 'asyncpg=WARNING,actors.email=DEBUG';"
                    " levels DEBUG, INFO, WARNING, ERROR, CRITICAL)")


def parse_log_levels(text: str) -> dict[str, str]:
    """HERALD_LOG_LEVELS: ``"asyncpg=WARNING,actors.email=DEBUG"`` -> logger name -> level
    (upper case). Empty: no logger differs from HERALD_LOG_LEVEL. A logger's level
    applies to the loggers below it (``actors`` covers ``actors.email``)."""
    levels: dict[str, str] = {}
    for entry in text.split(","):
        if not entry.strip():
            continue
        name, equals, level = entry.partition("=")
        name, level = name.strip(), level.strip().upper()
        if not equals or not _LOGGER_NAME.match(name) or level not in LOG_LEVELS:
            raise HeraldConfigError(f"{VARIABLES['log_levels']} must {_LOG_LEVELS_RULE} (got {text!r})")
        levels[name] = level
    return levels


# -- what each variable may hold ------------------------------------------------
# Each rule's description completes "HERALD_X must ..." in the one-line error.


def _folded(fold: Callable[[str], str]) -> BeforeValidator:
    """Choices are matched after trimming and folding case ("SMTP " is smtp)."""
    return BeforeValidator(lambda value: fold(value.strip()) if isinstance(value, str) else value)


def _recipient_limit(text: str) -> str:
    try:
        parse_recipient_limit(text)
    except HeraldConfigError:
        raise ValueError(_RECIPIENT_LIMIT_RULE) from None
    return text.strip()


def _url(*schemes: str) -> AfterValidator:
    def check(url: str) -> str:
        try:
            parts = urlsplit(url)
        except ValueError:
            raise ValueError("not a URL") from None
        if parts.scheme not in schemes or not (parts.netloc or parts.path):
            raise ValueError("not a URL")
        return url

    return AfterValidator(check)


# One entry of HERALD_DASHBOARD_ALLOWED_HOSTS: a host name, an IPv4 address or a
# bracketed IPv6 one, optionally with a port.
_ALLOWED_HOST = re.compile(r"^(?:[a-z0-9_-]+(?:\.[a-z0-9_-]+)*\.?|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?$", re.IGNORECASE)
_ALLOWED_HOSTS_RULE = ("be a comma-separated list of host names the dashboard answers to, each optionally"
                       " with :port (e.g. herald.example.com,10.0.0.5:8080,[::1])")


def _allowed_hosts(text: str) -> str:
    entries = [entry.strip() for entry in text.split(",") if entry.strip()]
    if not entries or not all(_ALLOWED_HOST.match(entry) for entry in entries):
        raise ValueError(_ALLOWED_HOSTS_RULE)
    return text


def _log_levels(text: str) -> str:
    try:
        parse_log_levels(text)
    except HeraldConfigError:
        raise ValueError(_LOG_LEVELS_RULE) from None
    return text.strip()


_RETENTION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_RETENTION_RULE = ("be an age like '30d', '12h' or '90m' (s, m, h, d, w; from 1h to 3650d),"
                   " or 'off' (or 0) to prune nothing")
MIN_RETENTION = dt.timedelta(hours=1)
MAX_RETENTION = dt.timedelta(days=3650)


def parse_retention(text: str, name: str) -> dt.timedelta | None:
    """An age for retention (HERALD_RETENTION, ``herald prune --older-than``): ``"30d"``,
    ``"12h"``, ``"90m"``; ``"off"`` or ``"0"``: None (nothing is pruned). A bare number
    is refused: "30" could mean seconds or days, and the wrong guess deletes a month.
    HeraldConfigError naming ``name`` otherwise. Pure, like the other parsers here."""
    cleaned = text.strip().lower()
    if cleaned in ("off", "0"):
        return None
    match = _RETENTION.match(cleaned)
    age = dt.timedelta(seconds=float(match.group(1)) * _UNIT_S[match.group(2)]) if match else None
    if age is None or not MIN_RETENTION <= age <= MAX_RETENTION:
        raise HeraldConfigError(f"{name} must {_RETENTION_RULE} (got {text!r})")
    return age


def _retention(text: str) -> str:
    try:
        parse_retention(text, "")
    except HeraldConfigError:
        raise ValueError(_RETENTION_RULE) from None
    return text.strip()


def _choices(names: tuple[str, ...]) -> str:
    return "be one of " + ", ".join(names)


Port = Annotated[int, Field(ge=1, le=65535, description="be a port number from 1 to 65535")]
PortOrOff = Annotated[int, Field(ge=0, le=65535, description="be a port number from 1 to 65535, or 0 (off)")]
Positive = Annotated[int, Field(gt=0, description="be a whole number above 0")]
AtLeastZero = Annotated[int, Field(ge=0, description="be a whole number, 0 or more")]
Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False, description="be a number of seconds above 0")]
SecondsOrZero = Annotated[float, Field(ge=0, allow_inf_nan=False, description="be a number of seconds, 0 or more")]
Flag = Annotated[bool, Field(description="be true or false")]
Text = Annotated[str, Field(description="be text")]
EmailProviderName = Annotated[EmailProvider, _folded(str.lower), Field(description=_choices(EMAIL_PROVIDERS))]
SmsProviderName = Annotated[SmsProvider, _folded(str.lower), Field(description=_choices(SMS_PROVIDERS))]
LogLevelName = Annotated[LogLevel, _folded(str.upper), Field(description=_choices(LOG_LEVELS))]
LogFormatName = Annotated[LogFormat, _folded(str.lower), Field(description=_choices(LOG_FORMATS))]
RecipientLimit = Annotated[str, AfterValidator(_recipient_limit), Field(description=_RECIPIENT_LIMIT_RULE)]
Retention = Annotated[str, AfterValidator(_retention), Field(description=_RETENTION_RULE)]
LogLevels = Annotated[str, AfterValidator(_log_levels), Field(description=_LOG_LEVELS_RULE)]
AllowedHosts = Annotated[str, AfterValidator(_allowed_hosts), Field(description=_ALLOWED_HOSTS_RULE)]
PostgresUrl = Annotated[str, _url("postgresql", "postgres"),
                        Field(description="be a postgresql:// URL")]
RedisUrl = Annotated[str, _url("redis", "rediss", "unix"),
                     Field(description="be a redis://, rediss:// or unix:// URL")]
HttpUrl = Annotated[str, _url("http", "https"), Field(description="be an http:// or https:// URL")]


def _var(name: str) -> Any:
    """A variable read into this field; unset or empty, the Settings default holds."""
    return Field(None, validation_alias=name)


class _Environment(BaseSettings):
    """The one table of Herald's environment variables: each line maps a variable
    to the :class:`Settings` field of the same name and says what it may hold.

    It reads only the mapping :meth:`Settings.from_env` hands it (tests pass
    their own), never the process's environment behind its back.
    """

    # Unset variables stay None (not validated) and are left to the Settings defaults.
    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore", validate_default=False)

    database_url: PostgresUrl = _var("HERALD_DATABASE_URL")
    redis_url: RedisUrl = _var("HERALD_REDIS_URL")
    data_dir: Text = _var("HERALD_DATA_DIR")
    dashboard_host: Text = _var("HERALD_DASHBOARD_HOST")
    dashboard_port: Port = _var("HERALD_DASHBOARD_PORT")
    # Comma-separated; split into a tuple by from_env.
    dashboard_allowed_hosts: AllowedHosts = _var("HERALD_DASHBOARD_ALLOWED_HOSTS")
    session_hours: Seconds = _var("HERALD_SESSION_HOURS")
    session_idle_minutes: Seconds = _var("HERALD_SESSION_IDLE_MINUTES")
    log_level: LogLevelName = _var("HERALD_LOG_LEVEL")
    log_format: LogFormatName = _var("HERALD_LOG_FORMAT")
    log_levels: LogLevels = _var("HERALD_LOG_LEVELS")
    worker_processes: Positive = _var("HERALD_WORKER_PROCESSES")
    worker_threads: Positive = _var("HERALD_WORKER_THREADS")
    worker_timeout_ms: Positive = _var("HERALD_WORKER_TIMEOUT_MS")
    dispatch_batch_size: Positive = _var("HERALD_DISPATCH_BATCH_SIZE")
    dispatch_in_flight: Positive = _var("HERALD_DISPATCH_IN_FLIGHT")
    sweep_interval_s: Seconds = _var("HERALD_SWEEP_INTERVAL")
    lease_s: Seconds = _var("HERALD_LEASE")
    heartbeat_interval_s: Seconds = _var("HERALD_HEARTBEAT_INTERVAL")
    actor_time_limit_s: Seconds = _var("HERALD_ACTOR_TIME_LIMIT")
    watchdog_s: Seconds = _var("HERALD_WATCHDOG")
    redis_timeout_s: Seconds = _var("HERALD_REDIS_TIMEOUT")
    health_outbox_lag_s: SecondsOrZero = _var("HERALD_HEALTH_OUTBOX_LAG")
    health_backlog: AtLeastZero = _var("HERALD_HEALTH_BACKLOG")
    health_queue_depth: AtLeastZero = _var("HERALD_HEALTH_QUEUE_DEPTH")
    health_dead_letters: AtLeastZero = _var("HERALD_HEALTH_DEAD_LETTERS")
    health_stuck_steps: AtLeastZero = _var("HERALD_HEALTH_STUCK_STEPS")
    health_wal_unread_mb: AtLeastZero = _var("HERALD_HEALTH_WAL_UNREAD")
    email_provider: EmailProviderName = _var("HERALD_EMAIL_PROVIDER")
    sms_provider: SmsProviderName = _var("HERALD_SMS_PROVIDER")
    recipient_limit: RecipientLimit = _var("HERALD_RECIPIENT_LIMIT")
    retention: Retention = _var("HERALD_RETENTION")
    retention_failed: Retention = _var("HERALD_RETENTION_FAILED")
    email_from: Text = _var("HERALD_EMAIL_FROM")
    sms_from: Text = _var("HERALD_SMS_FROM")
    http_timeout_s: Seconds = _var("HERALD_HTTP_TIMEOUT")
    smtp_host: Text = _var("HERALD_SMTP_HOST")
    smtp_port: Port = _var("HERALD_SMTP_PORT")
    smtp_username: Text = _var("HERALD_SMTP_USERNAME")
    smtp_password: Text = _var("HERALD_SMTP_PASSWORD")
    smtp_starttls: Flag = _var("HERALD_SMTP_STARTTLS")
    smtp_tls: Flag = _var("HERALD_SMTP_TLS")
    mailgun_base_url: HttpUrl = _var("HERALD_MAILGUN_BASE_URL")
    mailgun_domain: Text = _var("HERALD_MAILGUN_DOMAIN")
    mailgun_api_key: Text = _var("HERALD_MAILGUN_API_KEY")
    telnyx_base_url: HttpUrl = _var("HERALD_TELNYX_BASE_URL")
    telnyx_api_key: Text = _var("HERALD_TELNYX_API_KEY")
    twilio_base_url: HttpUrl = _var("HERALD_TWILIO_BASE_URL")
    twilio_account_sid: Text = _var("HERALD_TWILIO_ACCOUNT_SID")
    twilio_auth_token: Text = _var("HERALD_TWILIO_AUTH_TOKEN")
    webhook_signing_secret: Text = _var("HERALD_WEBHOOK_SIGNING_SECRET")
    # Comma-separated; split into a tuple by from_env.
    webhook_allowlist: Text = _var("HERALD_WEBHOOK_ALLOWLIST")
    webhook_allow_private: Flag = _var("HERALD_WEBHOOK_ALLOW_PRIVATE")
    metrics_token: Text = _var("HERALD_METRICS_TOKEN")
    metrics_host: Text = _var("HERALD_METRICS_HOST")
    worker_metrics_port: PortOrOff = _var("HERALD_WORKER_METRICS_PORT")
    daemon_metrics_port: PortOrOff = _var("HERALD_DAEMON_METRICS_PORT")
    metrics_tenant_labels: AtLeastZero = _var("HERALD_METRICS_TENANT_LABELS")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)  # the values _MappingSource read; no .env, no secrets dir

    @classmethod
    def read(cls, env: Mapping[str, str]) -> dict[str, Any]:
        """The fields whose variables ``env`` sets, parsed and checked."""
        try:
            parsed = cls(**_MappingSource(cls, env)())
        except ValidationError as exc:
            raise HeraldConfigError(_explain(exc, env)) from None
        return {name: getattr(parsed, name) for name in parsed.model_fields_set}


class _MappingSource(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        self._env = env
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # An empty variable counts as unset (as before: ``HERALD_X=`` keeps the default).
        return {name: value for name, value in self._env.items() if name in _FIELDS and value != ""}


# Settings field -> environment variable, read off the table above.
VARIABLES: dict[str, str] = {name: str(info.validation_alias) for name, info in _Environment.model_fields.items()}
_FIELDS = {variable: name for name, variable in VARIABLES.items()}


def _shown(name: str, raw: str | None) -> str:
    """`` (got '...')`` for the message, or nothing for a secret (a password, key,
    token, or a URL that may carry a password): those never reach an error."""
    if raw is None or name in _SECRET_FIELDS or name.endswith("_url"):
        return ""
    return f" (got {raw!r})"


def _explain(exc: ValidationError, env: Mapping[str, str]) -> str:
    """One line: each variable at fault, what it may hold, and what it held."""
    problems: dict[str, str] = {}
    for error in exc.errors():
        key = str(error["loc"][0]) if error["loc"] else ""
        name = _FIELDS.get(key, key)
        variable = VARIABLES.get(name, key)
        info = _Environment.model_fields.get(name)
        rule = info.description if info is not None and info.description else "be valid"
        problems.setdefault(variable, f"{variable} must {rule}{_shown(name, env.get(variable))}")
    return "; ".join(problems.values())


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
    # Host names (host or host:port) the dashboard answers to besides its own address and
    # the loopback names; any other Host header is refused (DNS rebinding).
    dashboard_allowed_hosts: tuple[str, ...] = ()
    # A dashboard login lasts at most this long, and ends sooner after this long unused.
    session_hours: float = 12.0
    session_idle_minutes: float = 120.0
    log_level: str = "INFO"
    log_format: str = "auto"  # auto | json | console
    # Levels of single loggers, above or below log_level ("asyncpg=WARNING,actors.email=DEBUG").
    log_levels: str = ""
    worker_processes: int = 1
    worker_threads: int = 8
    # How long an idle Dramatiq consumer waits for a wake-up before polling.
    worker_timeout_ms: int = 1000
    dispatch_batch_size: int = 200
    # Match messages left unmatched before new events wait to go in one batch.
    dispatch_in_flight: int = 2
    sweep_interval_s: float = 5.0
    # Work claimed but not finished within the lease is picked up again.
    lease_s: float = 30.0
    heartbeat_interval_s: float = 5.0
    # Longest a Dramatiq actor may run one message (well below the lease).
    actor_time_limit_s: float = 25.0
    # A worker process whose event loop has not answered for this long exits
    # (non-zero) so that its supervisor restarts it; its steps go to the sweeper.
    # A daemon loop without a finished pass for its interval plus this long is
    # stuck: the daemon stops feeding systemd's watchdog (daemon.progress).
    watchdog_s: float = 30.0
    # Socket timeouts on Redis connections: a Redis outage is an error, not a hang.
    redis_timeout_s: float = 5.0
    # /health thresholds: past any of these the check fails and /health answers 503.
    health_outbox_lag_s: float = 60.0  # oldest event not yet matched
    health_backlog: int = 10_000  # events not yet matched
    health_queue_depth: int = 10_000  # messages waiting in one Dramatiq queue
    health_dead_letters: int = 0  # messages in the dead-letter queues
    health_stuck_steps: int = 0  # steps parked with an unknown outcome in the last day
    health_wal_unread_mb: int = 1024  # WAL the daemon has not confirmed reading (capture from the WAL)
    # Which provider delivers each channel; "capture" stores and sends nothing.
    email_provider: str = "capture"  # capture | smtp | mailgun
    sms_provider: str = "capture"  # capture | telnyx | twilio
    # Messages per channel to one recipient per window ("5/1h"; "0": no limit).
    recipient_limit: str = "5/1h"
    # Retention (daemon/retention.py): finished runs, their steps and messages, matched
    # events, stopped processes' heartbeats and replaced schedule fires older than this
    # are deleted by the leader daemon ("off": never); failed runs after retention_failed
    # (never sooner than retention).
    retention: str = "30d"
    retention_failed: str = "90d"
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
    # /metrics (dashboard, worker, daemon): with a token, only requests carrying
    # "Authorization: Bearer <token>"; without one, only loopback clients.
    metrics_token: str = field(default="", repr=False)
    # Where the worker's and the daemon's own /metrics listen (port 0: not at all).
    metrics_host: str = "127.0.0.1"
    worker_metrics_port: int = 9191
    daemon_metrics_port: int = 9192
    # Up to this many tenants (per process) get tenant and workflow labels; 0: none.
    metrics_tenant_labels: int = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read, parse and check the ``HERALD_*`` variables (of ``os.environ`` by default).

        A bad value raises :class:`HeraldConfigError` with one line naming the
        variable and what it may hold; secrets are never shown. Variables are
        mapped to fields in one place, the ``_Environment`` table.
        """
        env = os.environ if env is None else env
        values = _Environment.read(env)
        database_url = values.pop("database_url", None)
        redis_url = values.pop("redis_url", None)
        if (database_url is None) != (redis_url is None):
            raise HeraldConfigError(
                f"set both {VARIABLES['database_url']} and {VARIABLES['redis_url']}, or neither "
                "(Herald then runs its own embedded servers)"
            )
        layout = EmbeddedLayout.for_dir(Path(values.pop("data_dir", ".herald")))
        if "dashboard_allowed_hosts" in values:
            values["dashboard_allowed_hosts"] = tuple(
                host.strip().lower() for host in values["dashboard_allowed_hosts"].split(",") if host.strip()
            )
        if "webhook_allowlist" in values:
            values["webhook_allowlist"] = tuple(
                host.strip() for host in values["webhook_allowlist"].split(",") if host.strip()
            )
        settings = cls(
            database_url=database_url or layout.database_url,
            redis_url=redis_url or layout.redis_url,
            embedded=database_url is None,
            data_dir=layout.data_dir,
            **values,
        )
        _check_consistent(settings, set(values))
        return settings

    @property
    def liveness_s(self) -> float:
        """A daemon or worker process whose heartbeat is older than this is taken for dead."""
        return max(3 * self.heartbeat_interval_s, 2.0)

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
        env[VARIABLES["data_dir"]] = str(self.data_dir)
        if not self.embedded:
            env[VARIABLES["database_url"]] = self.database_url
            env[VARIABLES["redis_url"]] = self.redis_url
        env[VARIABLES["dashboard_port"]] = str(self.dashboard_port)
        env[VARIABLES["dashboard_host"]] = self.dashboard_host
        return env


# Passwords, keys, tokens and URLs (which may carry a password): never shown.
_SECRET_FIELDS = frozenset(f.name for f in fields(Settings) if not f.repr)


def _check_consistent(settings: Settings, chosen: set[str]) -> None:
    """Check the settings that depend on one another; ``chosen`` names the fields
    the environment set (the defaults are consistent among themselves)."""
    lease, limit = settings.lease_s, settings.actor_time_limit_s
    # An actor must end before its lease does, or the sweeper sends its work again
    # while it still runs. Checked when the time limit is set: a short lease alone
    # (as the end-to-end tests use, for quick recovery) keeps the default limit.
    if "actor_time_limit_s" in chosen and limit >= lease:
        lease_source = "" if "lease_s" in chosen else ", the default"
        raise HeraldConfigError(
            f"{VARIABLES['actor_time_limit_s']} must be below {VARIABLES['lease_s']} (got {limit:g} and"
            f" {lease:g}{lease_source}): a message still running when its lease ends would be sent again"
        )
    if settings.smtp_tls and settings.smtp_starttls:
        raise HeraldConfigError(
            f"{VARIABLES['smtp_tls']} and {VARIABLES['smtp_starttls']} must not both be true "
            "(TLS from the start, or STARTTLS after connecting: one of the two)"
        )


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
    for key, value in values.items():
        os.environ[VARIABLES[key]] = value
    current.cache_clear()
