"""pgoutput messages (protocol version 1) as daemon.wal_capture.Decoder reads them,
built by hand for what a real server seldom shows a test: a table described
again in the middle of a stream, a value left out of an update's new row, a
truncate, a message outside any transaction, a transaction not yet ended."""

from __future__ import annotations

import struct

from daemon.wal_capture import ORIGIN_PREFIX, Decoder, Relation

JSONB, TEXT, INT8 = 3802, 25, 20


def _s(text: str) -> bytes:
    return text.encode() + b"\0"


def begin(commit_lsn: int = 100) -> bytes:
    return b"B" + struct.pack(">qqi", commit_lsn, 0, 7)


def commit(end_lsn: int) -> bytes:
    return b"C" + struct.pack(">bqqq", 0, end_lsn - 8, end_lsn, 0)


def relation(relid: int, columns: list[tuple[str, int]], name: str = "jobs") -> bytes:
    body = struct.pack(">I", relid) + _s("public") + _s(name) + struct.pack(">bh", ord("f"), len(columns))
    for column, type_oid in columns:
        body += struct.pack(">b", 0) + _s(column) + struct.pack(">Ii", type_oid, -1)
    return b"R" + body


def tuple_data(*values: str | None | bytes) -> bytes:
    out = struct.pack(">h", len(values))
    for value in values:
        if value is None:
            out += b"n"
        elif value == b"u":
            out += b"u"
        else:
            encoded = value.encode() if isinstance(value, str) else value
            out += b"t" + struct.pack(">i", len(encoded)) + encoded
    return out


def message(prefix: str, content: str, *, transactional: bool = True) -> bytes:
    return b"M" + struct.pack(">bq", 1 if transactional else 0, 0) + _s(prefix) + struct.pack(
        ">i", len(content)) + content.encode()


COLUMNS = [("id", INT8), ("title", TEXT), ("data", JSONB)]


def test_changes_come_in_whole_transactions_with_their_rows() -> None:
    relations: dict[int, Relation] = {}
    done = Decoder(relations).feed([
        message(ORIGIN_PREFIX, "99", transactional=False),  # outside any transaction: nobody's
        begin(), relation(16384, COLUMNS),
        b"I" + struct.pack(">I", 16384) + b"N" + tuple_data("1", "Fix boiler", '{"a": [1, null]}'),
        b"U" + struct.pack(">I", 16384) + b"O" + tuple_data("1", "Fix boiler", '{"a": [1, null]}')
        + b"N" + tuple_data("1", "Fixed", b"u"),
        b"T" + struct.pack(">ibI", 1, 0, 16384),  # truncate: no event, as with the trigger
        commit(2000),
        begin(), message(ORIGIN_PREFIX, "42"),
        b"D" + struct.pack(">I", 16384) + b"O" + tuple_data("1", None, "null"),
        commit(3000),
        begin(), b"I" + struct.pack(">I", 16384) + b"N" + tuple_data("2", "not yet", None),  # no commit yet
    ])
    assert [(t.end_lsn, t.origin_run, [c.operation for c in t.changes]) for t in done] == [
        (2000, None, ["INSERT", "UPDATE"]), (3000, 42, ["DELETE"])]
    insert, update = done[0].changes
    assert insert.old is None and insert.new == {"id": "1", "title": "Fix boiler", "data": {"a": [1, None]}}
    # The value the log left out of the new row is the old row's.
    assert update.new == {"id": "1", "title": "Fixed", "data": {"a": [1, None]}}
    delete = done[1].changes[0]
    assert delete.new is None and delete.old == {"id": "1", "title": None, "data": None}
    assert relations[16384].qualified == "public.jobs"


def test_a_table_described_again_mid_stream_is_read_with_its_new_columns() -> None:
    relations: dict[int, Relation] = {}
    Decoder(relations).feed([begin(), relation(16384, COLUMNS[:2]), commit(10)])
    # The next call (a later part of the stream) uses what it was told before...
    [first] = Decoder(relations).feed(
        [begin(), b"I" + struct.pack(">I", 16384) + b"N" + tuple_data("5", "a"), commit(20)])
    assert first.changes[0].new == {"id": "5", "title": "a"}
    # ...until the table is described again (ALTER TABLE ... ADD COLUMN).
    [second] = Decoder(relations).feed([begin(), relation(16384, COLUMNS),
                                        b"I" + struct.pack(">I", 16384) + b"N" + tuple_data("6", "b", "[]"),
                                        commit(30)])
    assert second.changes[0].new == {"id": "6", "title": "b", "data": []}


def insert(row_id: str) -> bytes:
    return b"I" + struct.pack(">I", 16384) + b"N" + tuple_data(row_id, "t", None)


def test_a_transaction_fed_in_pieces_is_read_as_it_comes_and_ends_with_its_commit() -> None:
    decoder = Decoder()
    assert decoder.feed([begin(900), relation(16384, COLUMNS), message(ORIGIN_PREFIX, "7"), insert("1"),
                         insert("2")]) == []
    current = decoder.current
    assert current is not None and (current.commit_lsn, current.end_lsn, current.origin_run) == (900, 0, 7)
    assert [c.new["id"] for c in current.changes] == ["1", "2"]
    # Its reader takes away what it has written; the next pieces add to the rest.
    current.changes = []
    assert decoder.feed([insert("3")]) == [] and [c.new["id"] for c in current.changes] == ["3"]
    [ended, after] = decoder.feed([insert("4"), commit(1000), begin(1100), insert("5"), commit(1200)])
    assert ended is current and [c.new["id"] for c in ended.changes] == ["3", "4"]
    assert (ended.end_lsn, after.commit_lsn, [c.new["id"] for c in after.changes]) == (1000, 1100, ["5"])
    assert decoder.current is None
