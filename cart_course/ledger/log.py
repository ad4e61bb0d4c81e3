"""The log as the Merkle tree sees it: every stored event row, in notification order, as bytes.

A row's leaf is ``SHA-256(0x00 || leaf bytes)`` (RFC 9162), where the leaf bytes are the row as
the store holds it: a header naming its stream, version and type, then the stored state exactly
as stored (encrypted and compressed when the store is). A change to any byte of any row, to its
stream, version or type, or to the order of the rows, changes the tree.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any, NamedTuple

from ..eventlog import EventLog
from .merkle import leaf_hash

#: Rows read per query.
PAGE = 1000
LEAF_FORMAT = b"cart-course-row/1\n"
#: Text json.dumps writes as it is (no escape).
_PLAIN = re.compile(r"[A-Za-z0-9_.:\- ]*")


def leaf_bytes(stream: str, version: Any, topic: str, state: bytes) -> bytes:
    """``cart-course-row/1``, the JSON array ``[stream, version, topic]`` (compact, ASCII), then
    the stored state, each part ending in a newline but the last."""
    if type(version) is int and _PLAIN.fullmatch(topic) and _PLAIN.fullmatch(stream):
        header = f'["{stream}",{version},"{topic}"]'  # what json.dumps writes for these
    else:
        header = json.dumps([stream, version, topic], separators=(",", ":"), ensure_ascii=True)
    return LEAF_FORMAT + header.encode() + b"\n" + state


class LogRow(NamedTuple):
    notification_id: int
    stream: str
    version: Any
    topic: str
    state: bytes
    #: The stream id the row was recorded under when a migration re-keyed the row's stream id
    #: (``cart_course.streamids``): its leaf names that one, as it did when it was signed.
    recorded: str | None = None

    @property
    def data(self) -> bytes:
        return leaf_bytes(self.recorded or self.stream, self.version, self.topic, self.state)

    @property
    def leaf(self) -> bytes:
        return leaf_hash(self.data)


def state_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):  # a row rewritten by hand as text
        return value.encode("utf-8", "surrogatepass")
    return bytes(value)


def rows(app: EventLog, *, after: int = 0, up_to: int | None = None) -> Iterator[LogRow]:
    """Every stored event row with a notification id above ``after`` and at or below ``up_to``,
    in notification order, a page at a time."""
    start = after
    ids = app.stream_ids
    migrated = ids.migrated_up_to
    while True:
        page = app.notifications(start, PAGE, up_to=up_to)
        if not page:
            return
        for n in page:
            oid = n.originator_id
            stream = str(oid if isinstance(oid, uuid.UUID) else uuid.UUID(str(oid)))
            recorded = None
            if migrated is not None and n.id <= migrated:
                recorded = ids.recorded_id(stream, int(n.id))
                recorded = None if recorded == stream else recorded
            yield LogRow(
                int(n.id),
                stream,
                n.originator_version,
                str(n.topic),
                state_bytes(n.state),
                recorded,
            )
        start = page[-1].id
        if up_to is not None and start >= up_to:
            return
