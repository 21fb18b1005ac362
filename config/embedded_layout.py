"""Where the embedded default keeps its servers, derived from the data directory.

Every Herald process computes the same paths from the same data directory, so
the daemon, the workers and the dashboard find the servers ``herald up``
started without being told their addresses.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

DATABASE_NAME = "herald"
# A unix socket path must fit in sun_path (108 bytes on Linux).
MAX_SOCKET_PATH = 100


@dataclass(frozen=True)
class EmbeddedLayout:
    """Paths and URLs of the embedded PostgreSQL and Redis under ``data_dir``."""

    data_dir: Path

    @classmethod
    def for_dir(cls, data_dir: Path) -> EmbeddedLayout:
        return cls(data_dir.expanduser().resolve())

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "postgres"

    @property
    def redis_dir(self) -> Path:
        return self.data_dir / "redis"

    @property
    def socket_dir(self) -> Path:
        preferred = self.data_dir / "run"
        if len(str(preferred / ".s.PGSQL.5432")) <= MAX_SOCKET_PATH:
            return preferred
        # A deep data directory: keep the sockets under /tmp instead.
        digest = hashlib.sha1(str(self.data_dir).encode()).hexdigest()[:12]
        return Path("/tmp") / f"herald-{digest}"

    @property
    def redis_socket(self) -> Path:
        return self.socket_dir / "redis.sock"

    @property
    def redis_pidfile(self) -> Path:
        return self.socket_dir / "redis.pid"

    @property
    def database_url(self) -> str:
        return f"postgresql://postgres@/{DATABASE_NAME}?host={self.socket_dir}"

    @property
    def redis_url(self) -> str:
        return f"unix://{self.redis_socket}"
