"""Who may read /metrics, and the small listener that serves a worker group's
or a daemon's metrics.

The rule is the same on every /metrics (dashboard, worker, daemon): with
HERALD_METRICS_TOKEN set, a request must carry ``Authorization: Bearer <token>``;
without it, only clients on this machine (loopback addresses) are answered,
and a request that came through a proxy (it carries ``Forwarded`` or
``X-Forwarded-For``) counts as from elsewhere. Metrics hold counts, ages and
names of queues, channels and providers; never a secret.
"""

from __future__ import annotations

import hmac
import ipaddress
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from config.settings import Settings

log = structlog.get_logger(__name__)

FORWARDING_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP")
PARENT_CHECK_INTERVAL_S = 1.0


def is_loopback(address: str | None) -> bool:
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


def refusal(token: str, headers: Mapping[str, str], peer: str | None) -> tuple[int, str] | None:
    """None when the request may read /metrics; otherwise (status, one-line reason)."""
    if token:
        scheme, _, given = headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            return 401, "Herald: /metrics needs Authorization: Bearer <HERALD_METRICS_TOKEN>"
        return None
    if any(name in headers for name in FORWARDING_HEADERS) or not is_loopback(peer):
        return 403, ("Herald: /metrics answers only clients on this machine;"
                     " set HERALD_METRICS_TOKEN to let Prometheus read it from elsewhere")
    return None


def exposition(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The registry's metrics in the format the scraper asked for (text or OpenMetrics)."""
    from prometheus_client.exposition import choose_encoder

    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


class _Handler(BaseHTTPRequestHandler):
    server: _MetricsServer

    def do_GET(self) -> None:  # noqa: N802 - the standard library's name
        if self.path.split("?", 1)[0] != "/metrics":
            self._answer(404, b"Herald: only /metrics is served here\n", "text/plain; charset=utf-8")
            return
        refused = refusal(self.server.token, {k: v for k, v in self.headers.items()}, self.client_address[0])
        if refused is not None:
            status, reason = refused
            self._answer(status, (reason + "\n").encode(), "text/plain; charset=utf-8")
            return
        try:
            body, content_type = exposition(self.server.registry(), self.headers.get("Accept"))
        except Exception as exc:  # noqa: BLE001 - a bad file must not end the listener
            log.error("metrics: collecting failed", error=repr(exc))
            self._answer(500, b"Herald: collecting metrics failed; see the log\n", "text/plain; charset=utf-8")
            return
        self._answer(200, body, content_type)

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="herald-metrics"')
        self.end_headers()
        self.wfile.write(body)

    def version_string(self) -> str:
        return "Herald"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the standard library's name
        pass  # every scrape is not worth a log line


class _MetricsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], registry: Callable[[], CollectorRegistry], token: str) -> None:
        self.registry = registry
        self.token = token
        if ":" in address[0]:
            import socket

            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)


def listen(registry: Callable[[], CollectorRegistry], settings: Settings, port: int,
           *, what: str) -> _MetricsServer | None:
    """A listener on HERALD_METRICS_HOST:``port`` (not started); None when the
    port is 0 or taken (logged, naming the setting: metrics are not worth
    stopping Herald for)."""
    if port == 0:
        return None
    host = settings.metrics_host.strip("[]")
    try:
        server = _MetricsServer((host, port), registry, settings.metrics_token)
    except OSError as exc:
        variable = "HERALD_WORKER_METRICS_PORT" if what == "worker" else "HERALD_DAEMON_METRICS_PORT"
        log.warning(f"{what} metrics not served: cannot listen on {host}:{port} ({exc.strerror});"
                    f" choose another port with {variable}, or 0 for none")
        return None
    log.info(f"{what} metrics at http://{settings.metrics_host}:{port}/metrics")
    return server


def serve_forever(registry: Callable[[], CollectorRegistry], settings: Settings, port: int, *, what: str) -> int:
    """Serve on this thread until the process is stopped, or its parent (the
    worker's Dramatiq parent) is gone: a listener never outlives its worker."""
    from actors.middleware.lifecycle import set_parent_death_signal

    # The parent as forked from (not os.getppid(): if it died already, that is init).
    forked_from = multiprocessing.parent_process()
    parent = forked_from.pid if forked_from is not None and forked_from.pid else os.getppid()
    # The kernel's signal when the parent dies, and a watch for where that is not had.
    set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != parent:
        return 0
    server = listen(registry, settings, port, what=what)
    if server is None:
        return 0

    def watch_parent() -> None:
        while os.getppid() == parent:
            threading.Event().wait(PARENT_CHECK_INTERVAL_S)
        os._exit(0)

    threading.Thread(target=watch_parent, name="herald-metrics-parent-watch", daemon=True).start()
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


def serve_in_thread(registry: Callable[[], CollectorRegistry], settings: Settings, port: int,
                    *, what: str) -> Callable[[], None]:
    """Serve from a daemon thread of this process; returns the function that stops it."""
    server = listen(registry, settings, port, what=what)
    if server is None:
        return lambda: None
    thread = threading.Thread(target=server.serve_forever, name=f"herald-{what}-metrics", daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return stop
