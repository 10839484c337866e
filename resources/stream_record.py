"""One event as the stream delivered it (`StreamRecord`), apart from the stream backends in `resources.stream`.

Standard library only (no Dagster): the stream archive (`recsys_assets.stream_archive`) and other light
paths read and write records without loading the backends' Dagster resources.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

PREVIEW_BYTES = 1024  # what is kept of an oversize event, for its dead letter


@dataclass(frozen=True)
class StreamRecord:
    """One event as the stream delivered it."""

    shard: str
    sequence: str  # orders records within a shard
    data: bytes  # the payload exactly as produced (may not even be JSON); its first bytes only when oversize
    arrival: datetime  # when the stream accepted it (UTC)
    # the payload's size when it was over the limit and cut to a preview (for a local-stream line too long to
    # read whole, the stored line's size: the payload plus a few dozen bytes of envelope and escapes)
    oversize_bytes: int = 0

    def to_json(self) -> dict:
        item = {"shard": self.shard, "sequence": self.sequence, "arrival": self.arrival.isoformat(),
                "data": base64.b64encode(self.data).decode("ascii")}
        return {**item, "oversize_bytes": self.oversize_bytes} if self.oversize_bytes else item

    @classmethod
    def from_json(cls, item: Mapping) -> StreamRecord:
        return cls(item["shard"], item["sequence"], base64.b64decode(item["data"]),
                   datetime.fromisoformat(item["arrival"]), int(item.get("oversize_bytes", 0)))

    @classmethod
    def limited(cls, shard: str, sequence: str, data: bytes, arrival: datetime, max_bytes: int) -> StreamRecord:
        """The record, or its preview when `data` is over `max_bytes`."""
        if len(data) > max_bytes:
            return cls(shard, sequence, data[:PREVIEW_BYTES], arrival, len(data))
        return cls(shard, sequence, data, arrival)
