"""A logical replication stream on the daemon's event loop: the database's slot,
streamed by the server as transactions commit (``START_REPLICATION``, the
built-in ``pgoutput`` plugin), read without blocking (psycopg2's asynchronous
replication connection, its socket watched by the event loop).

asyncpg does not speak the replication protocol; libpq does, through
psycopg2. The server sends each transaction once it has committed and been
flushed, so a change reaches the daemon a moment after its commit, with no
trigger and no notification. What the daemon has written as events it
confirms (``flush_lsn``); psycopg2 reports that to the server every
``STATUS_INTERVAL_S`` and answers its keepalives, and the server keeps the
WAL from there on. While nothing arrives, the daemon confirms where the
server has read up to (:meth:`ReplicationStream.confirm_idle`), so that
writes to other tables do not make the server keep WAL for it.
"""

from __future__ import annotations

import asyncio

import psycopg2
import psycopg2.extensions
import psycopg2.extras
from psycopg2.extras import LogicalReplicationConnection

from daemon.loops import wait_any

STATUS_INTERVAL_S = 10
# A transaction received this far (in messages, about one per changed row) is
# handed over in pieces of at least this many, without waiting for its commit,
# so that one that changes millions of rows is never held whole.
SPILL_MESSAGES = 5_000
# Messages held at most: past this many, the stream stops reading the socket
# (the server waits) until they are taken.
HOLD_MESSAGES = 4 * SPILL_MESSAGES

# Errors of the replication connection: lost, refused, or the slot in use by another daemon.
STREAM_ERRORS: tuple[type[Exception], ...] = (psycopg2.Error, OSError)


class ReplicationStream:
    """The messages of a slot, collected as they arrive; whole transactions are taken."""

    def __init__(self, conn: psycopg2.extensions.connection) -> None:
        self.conn = conn
        self.cursor: psycopg2.extras.ReplicationCursor | None = None  # once connected
        self.messages: list[bytes] = []
        self.complete = 0  # messages up to the end of the last transaction received whole
        self.error: Exception | None = None
        self.confirmed = 0  # the furthest position confirmed to the server
        self.spill_messages = SPILL_MESSAGES
        self.hold_messages = HOLD_MESSAGES
        self.peak = 0  # the most messages held at once
        self._in_transaction = False  # between a BEGIN received and its COMMIT
        self._paused = False
        self._arrived = asyncio.Event()
        self._fd = conn.fileno()

    @classmethod
    async def open(cls, dsn: str, slot: str, publication: str) -> ReplicationStream:
        conn = psycopg2.connect(dsn, connection_factory=LogicalReplicationConnection, async_=True,
                                application_name="herald-wal-capture")
        stream = cls(conn)
        try:
            await _ready(conn)
            stream.cursor = conn.cursor()
            stream.cursor.start_replication(
                slot_name=slot, decode=False, status_interval=STATUS_INTERVAL_S,
                options={"proto_version": "1", "publication_names": publication, "messages": "true"})
            await _ready(conn)
        except BaseException:
            conn.close()
            raise
        asyncio.get_running_loop().add_reader(stream._fd, stream._readable)
        return stream

    def _readable(self) -> None:
        try:
            while (message := self.cursor.read_message()) is not None:
                self.messages.append(message.payload)
                kind = message.payload[:1]
                if kind == b"B":
                    self._in_transaction = True
                elif kind == b"C":  # a commit: its transaction is whole
                    self._in_transaction = False
                    self.complete = len(self.messages)
                    self._arrived.set()
                elif len(self.messages) - self.complete >= self.spill_messages:
                    self._arrived.set()  # a large transaction: its first pieces can go
                self.peak = max(self.peak, len(self.messages))
                if len(self.messages) >= self.hold_messages:
                    # Taken more slowly than it comes: the server waits, not the memory.
                    asyncio.get_running_loop().remove_reader(self._fd)
                    self._paused = True
                    self._arrived.set()
                    return
        except STREAM_ERRORS as exc:
            self.error = exc
            self._arrived.set()

    async def wait(self, timeout: float, stop: asyncio.Event) -> None:
        """Until a transaction has arrived whole, ``stop`` is set or ``timeout``; raises
        if the stream broke."""
        await wait_any(self._arrived, stop, timeout=timeout)
        self._arrived.clear()
        if self.error is not None:
            raise self.error

    def take(self) -> list[bytes]:
        """The messages of the transactions received whole, in order, and those of the
        one being received once there are ``spill_messages`` of them (the rest stay)."""
        upto = self.complete
        if len(self.messages) - self.complete >= self.spill_messages:
            upto = len(self.messages)
        taken, self.messages = self.messages[:upto], self.messages[upto:]
        self.complete = 0
        if self._paused and len(self.messages) < self.hold_messages:
            self._paused = False
            asyncio.get_running_loop().add_reader(self._fd, self._readable)
            self._readable()  # what the socket buffered meanwhile
        return taken

    def confirm(self, lsn: int) -> None:
        """Everything up to ``lsn`` is written: the server may let its WAL go."""
        self.confirmed = max(self.confirmed, lsn)
        self.cursor.send_feedback(flush_lsn=self.confirmed)

    def confirm_idle(self) -> None:
        """Nothing received is waiting to be written (no message held, no transaction
        being received): confirm up to where the server
        has read the WAL, and ask it to say where that is now.

        The server sends nothing for transactions that changed no published table,
        and keeps all the WAL from the last position confirmed. Without this, an
        application busy with tables Herald does not capture would make the server
        keep its WAL for as long as the captured tables stay quiet. A transaction
        that commits after that position is still sent: the server sends each at
        its commit, and says where it has read only between them (its keepalive's
        ``wal_end``)."""
        if not self.messages and not self._in_transaction:
            self.confirmed = max(self.confirmed, self.cursor.wal_end)
            self.cursor.send_feedback(flush_lsn=self.confirmed, reply=True)

    def close(self) -> None:
        if not self._paused:
            asyncio.get_running_loop().remove_reader(self._fd)
        self.conn.close()


async def _ready(conn: psycopg2.extensions.connection) -> None:
    """Drive an asynchronous psycopg2 connection until its operation is done."""
    loop = asyncio.get_running_loop()
    fd = conn.fileno()
    while True:
        state = conn.poll()
        if state == psycopg2.extensions.POLL_OK:
            return
        waiter: asyncio.Future[None] = loop.create_future()
        add, remove = ((loop.add_reader, loop.remove_reader) if state == psycopg2.extensions.POLL_READ
                       else (loop.add_writer, loop.remove_writer))
        add(fd, lambda: waiter.done() or waiter.set_result(None))
        try:
            await waiter
        finally:
            remove(fd)
