"""B7's archive lag: how much WAL the primary has written that is not yet in the repository.

A sampler asks the primary (through HAProxy), every `interval` seconds, for its current WAL
position and segment and `pg_stat_archiver.last_archived_wal`. The arithmetic is pure:

- segments behind: complete segments not archived yet (the current segment, still being
  written, is not counted: it cannot be archived before it is switched);
- RPO: the age of the oldest WAL byte not in the repository. That byte is the first one of
  the segment after the last archived one; it was written after the last sample whose
  position was still before that segment's start, so the RPO at sample time t is taken as
  t − (that sample's time): an upper bound, at most one sampling interval too high.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from bench.recorder import BackgroundLoop, close_quietly

# (seconds since the sampler started, current WAL position as a byte number,
#  current segment name, last archived segment name or None)
ArchiveSample = tuple[float, int, str, str | None]


def parse_lsn(text: str) -> int:
    """`16/B374D848` as a byte position."""
    high, _, low = text.partition("/")
    if not low:
        raise ValueError(f"not an LSN: {text!r}")
    return (int(high, 16) << 32) + int(low, 16)


def segment_number(name: str, segment_bytes: int) -> int:
    """The segment number of a WAL file name (timeline ignored): `000000010000000200000003`
    is segment 2 × (4 GiB ÷ segment size) + 3. A name with a suffix (`.partial`,
    `.00000028.backup`) counts as its segment."""
    base = name[:24]
    if len(base) != 24 or any(c not in "0123456789ABCDEF" for c in base.upper()):
        raise ValueError(f"not a WAL segment name: {name!r}")
    per_log = 0x100000000 // segment_bytes
    return int(base[8:16], 16) * per_log + int(base[16:24], 16)


def archived_segment(last_archived_wal: str | None, segment_bytes: int) -> int | None:
    """The segment number pg_stat_archiver says was archived last; a timeline history file
    (`00000002.history`) says nothing about segments (None)."""
    if not last_archived_wal or last_archived_wal.endswith(".history"):
        return None
    return segment_number(last_archived_wal, segment_bytes)


def lag_series(samples: list[ArchiveSample], segment_bytes: int) -> list[dict[str, Any]]:
    """Per sample: segments behind and the RPO in seconds (None before anything was archived).

    The first unarchived byte is at (last archived segment + 1) × segment size. Nothing is
    unarchived while the current position is at or before it (a switched, still empty
    segment holds no WAL). Otherwise the byte was written after the last earlier sample whose
    position was at or before it; if no sample was, the recording started after it was
    written and the RPO is at least the time since the first sample (marked `lower_bound`).
    """
    out: list[dict[str, Any]] = []
    last_archived: int | None = None
    for i, (t, lsn, current, archived_name) in enumerate(samples):
        archived = archived_segment(archived_name, segment_bytes)
        if archived is None:
            archived = last_archived
        last_archived = archived
        if archived is None:
            out.append({"t": t, "segments_behind": None, "rpo_s": None, "lower_bound": False})
            continue
        behind = max(0, segment_number(current, segment_bytes) - archived - 1)
        boundary = (archived + 1) * segment_bytes
        if lsn <= boundary:
            out.append({"t": t, "segments_behind": behind, "rpo_s": 0.0, "lower_bound": False})
            continue
        before = next((j for j in range(i - 1, -1, -1) if samples[j][1] <= boundary), None)
        since = samples[before][0] if before is not None else samples[0][0]
        out.append({"t": t, "segments_behind": behind, "rpo_s": t - since, "lower_bound": before is None})
    return out


def rate_since(points: list[tuple[float, int]], since: float) -> float | None:
    """Bytes per second between the first point at or after `since` and the last one."""
    kept = [p for p in points if p[0] >= since]
    if len(kept) < 2 or kept[-1][0] <= kept[0][0]:
        return None
    return (kept[-1][1] - kept[0][1]) / (kept[-1][0] - kept[0][0])


def summarize_lag(series: list[dict[str, Any]], since: float = 0.0) -> dict[str, Any]:
    """Worst and typical RPO and segments behind over the samples taken at or after `since`."""
    kept = [s for s in series if s["t"] >= since and s["rpo_s"] is not None]
    rpos = sorted(s["rpo_s"] for s in kept)
    return {
        "samples": len(kept),
        "worst_rpo_s": rpos[-1] if rpos else None,
        "median_rpo_s": rpos[len(rpos) // 2] if rpos else None,
        "worst_segments_behind": max((s["segments_behind"] for s in kept), default=None),
        "worst_is_lower_bound": bool(rpos) and any(s["lower_bound"] and s["rpo_s"] == rpos[-1] for s in kept),
    }


SAMPLE_SQL = ("SELECT pg_current_wal_lsn()::text, pg_walfile_name(pg_current_wal_lsn()), "
              "last_archived_wal, failed_count, (SELECT wal_bytes FROM pg_stat_wal) FROM pg_stat_archiver")


@dataclass
class ArchiveSampler(BackgroundLoop):
    """Samples the primary's WAL position and pg_stat_archiver in the background."""

    thread_name: ClassVar[str] = "bench-archive"
    host: str
    port: int
    password: str
    interval: float = 0.25
    samples: list[ArchiveSample] = field(default_factory=list)
    errors: int = 0
    failed_count: tuple[int, int] | None = None  # archiver failures (first, last sample)
    # (t, WAL generated so far): pg_stat_wal.wal_bytes, without the padding of switched segments
    wal_bytes: list[tuple[float, int]] = field(default_factory=list)

    def _connect(self) -> Any:
        import psycopg

        return psycopg.connect(host=self.host, port=self.port, user="postgres", dbname="postgres",
                               password=self.password, connect_timeout=3, autocommit=True)

    def segment_bytes(self) -> int:
        with self._connect() as conn:
            row = conn.execute("SELECT setting, unit FROM pg_settings "
                               "WHERE name = 'wal_segment_size'").fetchone()
        if row is None:
            raise RuntimeError("no wal_segment_size in pg_settings")
        # PostgreSQL ≥ 11 reports it in bytes (unit B); older ones in 8 kB blocks.
        return int(row[0]) * (8192 if row[1] == "8kB" else 1)

    def _run(self) -> None:
        conn: Any = None
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = self._connect()
                row = conn.execute(SAMPLE_SQL).fetchone()
                t = self.now()
                if row is not None:
                    self.samples.append((t, parse_lsn(row[0]), row[1], row[2]))
                    failed, generated = int(row[3]), int(row[4])
                    self.failed_count = (self.failed_count[0] if self.failed_count else failed, failed)
                    self.wal_bytes.append((t, generated))
            except Exception:  # noqa: BLE001 - a missed sample only widens the bound
                self.errors += 1
                close_quietly(conn)
                conn = None
            next_at = max(next_at + self.interval, time.monotonic())
            self._stop.wait(max(0.0, next_at - time.monotonic()))
        if conn is not None:
            conn.close()
