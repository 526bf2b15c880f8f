"""A write recorder through HAProxy: one insert every 20 ms, every attempt kept as (t, latency, ok).

tests/cluster/workload.py's WriteLoad proves that no acknowledged write is lost; the benchmark
needs the time line instead (latency per write for the charts, and unavailability windows to
compare with what Patroni's and HAProxy's settings predict). Same approach: one connection,
autocommit, reconnect after any error, never reuse an id.

The window arithmetic is pure (no driver needed), so the report and its test import it freely.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

# (seconds since the recorder started, latency in ms, acknowledged?)
Sample = tuple[float, float, bool]


def unavailability_windows(samples: list[Sample], stall_s: float = 1.0) -> list[tuple[float, float]]:
    """Periods in which the client could not get a write acknowledged.

    A window runs from the acknowledgement (t + latency) of the last write that succeeded
    before it to the acknowledgement of the first write that succeeded after it. It is a
    window when at least one attempt failed in between, or when the gap is longer than
    `stall_s` (a write that hung, then succeeded, is unavailability too). Failures before
    the first acknowledgement start at the first attempt; failures after the last one end
    with the end of the last attempt. Overstates by at most one interval plus one latency.
    """
    windows: list[tuple[float, float]] = []
    last_ack: float | None = None
    first_failure: float | None = None  # start of the first failed attempt since last_ack
    last_end = 0.0
    for t, latency_ms, ok in sorted(samples):
        end = t + latency_ms / 1000.0
        last_end = max(last_end, end)
        if not ok:
            if first_failure is None:
                first_failure = t
            continue
        if first_failure is not None:
            windows.append((last_ack if last_ack is not None else first_failure, end))
        elif last_ack is not None and end - last_ack > stall_s:
            windows.append((last_ack, end))
        last_ack = end
        first_failure = None
    if first_failure is not None:
        windows.append((last_ack if last_ack is not None else first_failure, last_end))
    return windows


def longest(windows: list[tuple[float, float]]) -> float:
    """Duration of the longest window, 0.0 when there is none."""
    return max((end - start for start, end in windows), default=0.0)


def windows_after(windows: list[tuple[float, float]], t: float) -> list[tuple[float, float]]:
    """The windows that end after t (those an event at time t can have caused)."""
    return [(start, end) for start, end in windows if end > t]


def summarize(samples: list[Sample], since: float = 0.0, stall_s: float = 1.0) -> dict[str, Any]:
    """Counts and windows of the samples, keeping only windows that end after `since`."""
    wins = windows_after(unavailability_windows(samples, stall_s), since)
    return {
        "attempts": len(samples),
        "acknowledged": sum(1 for s in samples if s[2]),
        "failed": sum(1 for s in samples if not s[2]),
        "windows": [[round(a, 3), round(b, 3)] for a, b in wins],
        "longest_s": longest(wins),
    }


@dataclass
class BackgroundLoop:
    """A daemon thread running `_run` from start() to stop(); now() is its samples' clock."""

    thread_name: ClassVar[str] = "bench-loop"
    _t0: float = field(default=0.0, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)

    def now(self) -> float:
        """Seconds since start(), on the clock the samples use."""
        return time.monotonic() - self._t0

    def _run(self) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        self._stop.clear()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


def close_quietly(conn: Any) -> None:
    """Drop a connection after an error (closing it may fail too)."""
    if conn is not None:
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - the connection is being dropped anyway
            pass


@dataclass
class WriteRecorder(BackgroundLoop):
    """A background insert loop against host:port, recording every attempt."""

    thread_name: ClassVar[str] = "bench-writes"

    host: str
    port: int
    password: str
    interval: float = 0.02
    table: str = "pgha_bench_load"
    # libpq's TLS settings (sslmode, sslrootcert) with pgha:tls on; none: libpq's defaults.
    tls: dict[str, str] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    marks: list[tuple[float, str]] = field(default_factory=list)
    _next_id: int = 1

    def _connect(self) -> Any:
        import psycopg  # here, so that the window arithmetic above needs no driver

        # statement_timeout once per connection: one round trip per write, as a client would do.
        return psycopg.connect(host=self.host, port=self.port, user="postgres", dbname="postgres",
                               password=self.password, connect_timeout=3, autocommit=True,
                               options="-c statement_timeout=3000", **self.tls)

    def prepare(self) -> WriteRecorder:
        with self._connect() as conn:
            conn.execute(f"CREATE TABLE IF NOT EXISTS {self.table} "
                         "(id bigint PRIMARY KEY, at timestamptz DEFAULT now())")
            row = conn.execute(f"SELECT coalesce(max(id), 0) FROM {self.table}").fetchone()
            self._next_id = int(row[0]) + 1 if row else 1
        return self

    def mark(self, label: str) -> float:
        """Note an event (e.g. the switchover request) on the samples' time line."""
        t = self.now()
        self.marks.append((t, label))
        return t

    def _run(self) -> None:
        conn: Any = None
        next_start = time.monotonic()
        while not self._stop.is_set():
            start = time.monotonic()
            ident = self._next_id
            self._next_id += 1  # a failed insert may still have committed: never reuse its id
            ok = True
            try:
                if conn is None or conn.closed:
                    conn = self._connect()
                conn.execute(f"INSERT INTO {self.table} (id) VALUES (%s)", (ident,))
            except Exception as err:  # noqa: BLE001 - every failure is a sample, whatever raised it
                ok = False
                self.errors[(str(err).strip().splitlines() or [type(err).__name__])[0][:160]] += 1
                close_quietly(conn)
                conn = None
            end = time.monotonic()
            self.samples.append((start - self._t0, (end - start) * 1000.0, ok))
            next_start = max(next_start + self.interval, end)
            self._stop.wait(max(0.0, next_start - time.monotonic()))
        if conn is not None:
            conn.close()

    def acknowledged_since(self, t: float) -> bool:
        """True once a write that started after t was acknowledged (writes flow again)."""
        return any(ok and start >= t for start, _, ok in reversed(self.samples[-200:]))

    def series(self, event: str, event_t: float, chart: str) -> dict[str, Any]:
        """Everything the report needs to chart and summarize this recording (JSON-ready)."""
        return {
            "event": event,
            "event_t": round(event_t, 3),
            "chart": chart,
            "interval_ms": self.interval * 1000.0,
            "samples": [[round(t, 4), round(lat, 2), ok] for t, lat, ok in self.samples],
            "marks": [[round(t, 3), label] for t, label in self.marks],
            "errors": dict(self.errors.most_common(8)),
            **summarize(self.samples, since=event_t),
        }
