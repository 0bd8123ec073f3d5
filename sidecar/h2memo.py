"""HPACK memoised per connection: a header block that repeats costs a dict lookup.

gRPC clients and backends send the same header blocks call after call, and
once their fields are in the peer's dynamic table those blocks are only
indexed references. Decoding such a block, or encoding the same header list,
gives the same result every time as long as the dynamic table is the same,
and does not change the table. About half of h2's CPU per RPC was spent
there (decode, validation, normalisation, encode), so this keeps the result.

Design rules:
- A result is reused only while the dynamic table is the one it was made
  with: ``CountingTable`` counts every change (an entry added, the size set),
  and every cache holds only results of the current count.
- Only a block whose decoding (or encoding) left the table unchanged is kept:
  one that adds entries must run again, as it would change the table again.
- Inbound validation is memoised with the decoded block it checked, per
  validation flags; a block that fails validation raises and is never kept.
- A header list holding a never-indexed field is not memoised on the way out
  (tuple equality would not tell it from the same field indexed).
- Caches are bounded (``MAX_ENTRIES``); the streams and connections are h2's.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from h2.config import H2Configuration
from h2.connection import AllowedStreamIDs, H2Connection
from h2.stream import H2Stream
from h2.utilities import HeaderValidationFlags
from hpack import Decoder, Encoder, HeaderTuple, NeverIndexedHeaderTuple
from hpack.table import HeaderTable
from hyperframe.frame import ContinuationFrame, HeadersFrame, PushPromiseFrame

#: Distinct header blocks kept per connection and direction; more clears the cache.
MAX_ENTRIES: Final = 32
#: Blocks longer than this (encoded), or header lists larger than MAX_LIST (the
#: names and values), are not kept: a gRPC call's block is some 20-300 bytes,
#: and a connection's caches stay under MAX_ENTRIES * MAX_LIST of headers.
MAX_BLOCK: Final = 1024
MAX_LIST: Final = 8192


def list_size(headers: Iterable[tuple[bytes, bytes]]) -> int:
    return sum(len(name) + len(value) for name, value in headers)


class CountingTable(HeaderTable):
    """A dynamic table that counts its changes: equal counts, equal tables."""

    def __init__(self) -> None:
        super().__init__()
        self.changes = 0

    def add(self, name: bytes, value: bytes) -> None:
        self.changes += 1
        super().add(name, value)

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @maxsize.setter
    def maxsize(self, newmax: int) -> None:
        self.changes += 1
        HeaderTable.maxsize.fset(self, newmax)  # type: ignore[attr-defined]


class Decoded(list[HeaderTuple]):
    """A decoded header block, with what inbound validation made of it per flags."""

    def __init__(self, headers: Iterable[HeaderTuple]) -> None:
        super().__init__(headers)
        self.processed: dict[tuple[HeaderValidationFlags, object], list[Any]] = {}


class MemoDecoder(Decoder):
    """A decoder that returns a kept ``Decoded`` for a block seen with the same table."""

    def __init__(self, source: Decoder) -> None:
        super().__init__(source.max_header_list_size)
        self.header_table = CountingTable()
        self.header_table.maxsize = source.header_table.maxsize
        self.max_allowed_table_size = source.max_allowed_table_size
        self.kept: dict[bytes, Decoded] = {}
        self.kept_at = (0, 0)  # (table changes, max_header_list_size) the entries hold for

    def decode(self, data: bytes, raw: bool = False) -> Iterable[HeaderTuple]:
        table = self.header_table
        assert isinstance(table, CountingTable)
        state = (table.changes, self.max_header_list_size)
        if raw and state == self.kept_at and (hit := self.kept.get(data)) is not None:
            self._assert_valid_table_size()  # the limit may have changed since
            return hit
        headers = super().decode(data, raw)
        if not raw or table.changes != state[0] or len(data) > MAX_BLOCK or \
                list_size(headers) > MAX_LIST:
            return headers
        if state != self.kept_at or len(self.kept) >= MAX_ENTRIES:
            self.kept, self.kept_at = {}, state
        decoded = self.kept[bytes(data)] = Decoded(headers)
        return decoded


#: What ``MemoStream`` names an outbound header list by: its validation flags and the
#: (name, value) pairs h2 was given.
ListKey = tuple[HeaderValidationFlags, tuple[tuple[bytes, bytes], ...]]


class MemoEncoder(Encoder):
    """An encoder that returns the kept block for a header list it encoded with the same
    table. ``MemoStream`` names the list (``next_key``) before h2 normalises it."""

    def __init__(self, source: Encoder) -> None:
        super().__init__()
        self.header_table = CountingTable()
        self.header_table.maxsize = source.header_table.maxsize
        self.table_size_changes = list(source.table_size_changes)
        self.next_key: ListKey | None = None
        self.kept: dict[tuple[ListKey, bool], bytes] = {}
        self.kept_at = 0

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        named, self.next_key = self.next_key, None
        table = self.header_table
        assert isinstance(table, CountingTable)
        changes = table.changes
        if named is None or self.table_size_changes:  # a size update goes in this block
            return super().encode(headers, huffman)
        key = (named, huffman)
        if changes == self.kept_at and (hit := self.kept.get(key)) is not None:
            return hit
        block = super().encode(headers, huffman)
        if table.changes == changes and len(block) <= MAX_BLOCK and \
                list_size(named[1]) <= MAX_LIST:
            if changes != self.kept_at or len(self.kept) >= MAX_ENTRIES:
                self.kept, self.kept_at = {}, changes
            self.kept[key] = block
        return block


class MemoStream(H2Stream):
    """An h2 stream that names outbound header lists for ``MemoEncoder`` and reuses the
    inbound validation of a ``Decoded`` block."""

    def _build_headers_frames(self, headers: Iterable[Any], encoder: Encoder,
                              first_frame: HeadersFrame | PushPromiseFrame,
                              hdr_validation_flags: HeaderValidationFlags,
                              ) -> list[HeadersFrame | ContinuationFrame | PushPromiseFrame]:
        if not isinstance(encoder, MemoEncoder):
            return super()._build_headers_frames(headers, encoder, first_frame,
                                                 hdr_validation_flags)
        items = tuple(headers)  # h2 made them (name, value) pairs of bytes already
        if NeverIndexedHeaderTuple not in map(type, items):
            encoder.next_key = (hdr_validation_flags, items)
        try:
            return super()._build_headers_frames(items, encoder, first_frame,
                                                 hdr_validation_flags)
        finally:
            encoder.next_key = None  # never left for another list, whatever h2 raised

    def _process_received_headers(self, headers: Iterable[Any],
                                  header_validation_flags: HeaderValidationFlags,
                                  header_encoding: bool | str | None) -> list[Any]:
        if type(headers) is not Decoded:
            return super()._process_received_headers(headers, header_validation_flags,
                                                     header_encoding)
        key = (header_validation_flags, header_encoding)
        done = headers.processed.get(key)
        if done is None:
            done = headers.processed[key] = super()._process_received_headers(
                headers, header_validation_flags, header_encoding)
        return list(done)  # the event's own list: the kept one is shared


class MemoH2Connection(H2Connection):
    """An ``H2Connection`` with memoising HPACK and ``MemoStream`` streams."""

    def __init__(self, config: H2Configuration | None = None) -> None:
        super().__init__(config=config)
        self.encoder = MemoEncoder(self.encoder)
        self.decoder = MemoDecoder(self.decoder)

    def _begin_new_stream(self, stream_id: int, allowed_ids: AllowedStreamIDs) -> H2Stream:
        stream = super()._begin_new_stream(stream_id, allowed_ids)
        # h2 names its stream class inside this method; MemoStream adds behaviour, no
        # state, so switching the new stream's class is all a subclass needs.
        stream.__class__ = MemoStream
        return stream
