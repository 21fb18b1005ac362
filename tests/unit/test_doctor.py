"""`herald doctor`'s checks that need no server: providers and their credentials,
settings that look wrong. Each names the variable at fault and shows no secret."""

from __future__ import annotations

from config.settings import Settings
from daemon.doctor import Finding, clock_finding, local_findings, worst

CONFIGURED = {"HERALD_DATABASE_URL": "postgresql://herald:pg-SECRET-1@db.internal/app",
              "HERALD_REDIS_URL": "redis://cache.internal:6379/0"}


def found(**env: str) -> list[Finding]:
    return local_findings(Settings.from_env(env))


def problems(findings: list[Finding]) -> dict[str, str]:
    return {f.reason: f.level for f in findings if f.level != "ok"}


def test_the_embedded_default_has_nothing_to_fix() -> None:
    assert problems(found()) == {}
    assert worst(found()) == "ok"


def test_capture_with_servers_of_your_own_is_a_warning() -> None:
    findings = found(**CONFIGURED)
    assert problems(findings) == {
        "capture: emails are stored for viewing, never delivered": "warn",
        "capture: text messages are stored for viewing, never delivered": "warn"}
    assert [f.hint for f in findings if f.level == "warn"] == [
        "set HERALD_EMAIL_PROVIDER to a provider that delivers", "set HERALD_SMS_PROVIDER to a provider that delivers"]


def test_each_missing_credential_is_named_and_no_value_shown() -> None:
    findings = found(HERALD_EMAIL_PROVIDER="mailgun", HERALD_MAILGUN_API_KEY="mg-SECRET-2",
                     HERALD_EMAIL_FROM="ops@acme.example",
                     HERALD_SMS_PROVIDER="twilio", HERALD_TWILIO_AUTH_TOKEN="tw-SECRET-3")
    assert problems(findings) == {
        "mailgun: HERALD_MAILGUN_DOMAIN is not set": "fail",
        "twilio: HERALD_TWILIO_ACCOUNT_SID and HERALD_SMS_FROM are not set": "fail"}
    assert worst(findings) == "fail"
    text = repr(findings)
    assert "mg-SECRET-2" not in text and "tw-SECRET-3" not in text


def test_smtp_credentials_come_in_pairs_and_not_in_clear_across_the_network() -> None:
    base = {"HERALD_EMAIL_PROVIDER": "smtp", "HERALD_EMAIL_FROM": "ops@acme.example"}
    assert problems(found(**base, HERALD_SMTP_USERNAME="ops")) == {
        "smtp via localhost:25: HERALD_SMTP_PASSWORD is not set but HERALD_SMTP_USERNAME is": "fail"}
    remote = found(**base, HERALD_SMTP_HOST="smtp.acme.example", HERALD_SMTP_USERNAME="ops",
                   HERALD_SMTP_PASSWORD="smtp-SECRET-4")
    assert problems(remote) == {
        "smtp via smtp.acme.example:25: the SMTP password would cross the network unencrypted": "warn"}
    assert "smtp-SECRET-4" not in repr(remote)
    assert problems(found(**base, HERALD_SMTP_HOST="smtp.acme.example", HERALD_SMTP_USERNAME="ops",
                          HERALD_SMTP_PASSWORD="smtp-SECRET-4", HERALD_SMTP_STARTTLS="true")) == {}
    # Delivering for real from the default localhost address.
    assert [f.reason.split(" ")[0] for f in found(HERALD_EMAIL_PROVIDER="smtp") if f.level == "warn"] == [
        "HERALD_EMAIL_FROM"]


def test_settings_that_look_wrong_each_name_their_variable() -> None:
    findings = found(HERALD_LEASE="20", HERALD_RECIPIENT_LIMIT="0", HERALD_WEBHOOK_ALLOW_PRIVATE="true",
                     HERALD_DASHBOARD_HOST="0.0.0.0", HERALD_HEALTH_OUTBOX_LAG="2", HERALD_SWEEP_INTERVAL="5")
    warned = [f.reason.split(" ")[0] for f in findings if f.level == "warn"]
    assert warned == ["HERALD_LEASE", "HERALD_HEALTH_OUTBOX_LAG", "HERALD_RECIPIENT_LIMIT",
                      "HERALD_WEBHOOK_ALLOW_PRIVATE", "HERALD_DASHBOARD_HOST"]
    assert all(f.hint for f in findings if f.level == "warn")
    assert worst(findings) == "warn"
    # Names it answers to make a wildcard address fine.
    assert problems(found(HERALD_DASHBOARD_HOST="0.0.0.0", HERALD_DASHBOARD_ALLOWED_HOSTS="herald.acme.example")) == {}


def test_clock_skew_thresholds() -> None:
    assert [clock_finding(s).level for s in (0.0, 1.99, -2.01, 29.0, 30.5, -31.0)] == [
        "ok", "ok", "warn", "warn", "fail", "fail"]
    assert clock_finding(3.0).reason.startswith("this machine's clock is 3.0 s behind PostgreSQL's")
    assert clock_finding(-3.0).reason.startswith("this machine's clock is 3.0 s ahead of PostgreSQL's")
