"""A steady write load through HAProxy that records every acknowledged commit.

Used to prove that membership changes cost no failed transactions and to
measure the write-unavailability window of a switchover or a failover.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import psycopg


@dataclass
class WriteLoad:
    host: str
    port: int
    password: str
    interval: float = 0.05
    acknowledged: list[int] = field(default_factory=list)
    failures: list[tuple[float, str]] = field(default_factory=list)
    windows: list[tuple[float, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _next_id: int = 0

    def _connect(self) -> psycopg.Connection:
        return psycopg.connect(host=self.host, port=self.port, user="postgres", dbname="postgres",
                               password=self.password, connect_timeout=3, autocommit=True)

    def prepare(self, table: str = "pgha_load") -> None:
        self.table = table
        with self._connect() as conn:
            conn.execute(f"CREATE TABLE IF NOT EXISTS {table} "
                         "(id bigint PRIMARY KEY, at timestamptz DEFAULT now())")
            row = conn.execute(f"SELECT coalesce(max(id), 0) FROM {table}").fetchone()
            self._next_id = int(row[0]) + 1 if row else 1

    def _run(self) -> None:
        conn: psycopg.Connection | None = None
        down_since: float | None = None
        while not self._stop.is_set():
            ident = self._next_id
            try:
                if conn is None or conn.closed:
                    conn = self._connect()
                conn.execute("SET statement_timeout = '3s'")
                conn.execute(f"INSERT INTO {self.table} (id) VALUES (%s)", (ident,))
                self.acknowledged.append(ident)
                self._next_id += 1
                if down_since is not None:
                    self.windows.append((down_since, time.monotonic()))
                    down_since = None
            except Exception as err:  # noqa: BLE001 - any failed write is recorded, the loop goes on
                self.failures.append((time.monotonic(), str(err).strip().splitlines()[0][:200]))
                if down_since is None:
                    down_since = time.monotonic()
                if conn is not None:
                    conn.close()
                conn = None
                # An insert that failed may still have committed (ack lost): never reuse its id.
                self._next_id += 1
            time.sleep(self.interval)
        if conn is not None:
            conn.close()

    def start(self) -> WriteLoad:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def reset_counters(self) -> None:
        self.failures.clear()
        self.windows.clear()
        self._mark = len(self.acknowledged)

    def assert_progressing(self, timeout: float = 30.0) -> None:
        """The load must still be writing: a dead loop would report no failures at all."""
        assert self._thread is not None and self._thread.is_alive(), "the write load stopped"
        deadline = time.monotonic() + timeout
        while len(self.acknowledged) <= getattr(self, "_mark", 0) + 5:
            assert time.monotonic() < deadline, "no write acknowledged since the step began"
            time.sleep(0.5)

    def longest_window(self) -> float:
        return max((end - start for start, end in self.windows), default=0.0)

    def missing(self) -> list[int]:
        """Acknowledged ids that are not in the primary's table (must always be empty).

        Reads through HAProxy like any client, so right after a leader change it may
        have to reconnect until HAProxy's checks see the new primary (the primary port
        does not retry on the client's behalf)."""
        # Taken before the read: the load goes on, and an id acknowledged after the
        # SELECT's snapshot is not missing.
        acknowledged = list(self.acknowledged)
        deadline = time.monotonic() + 15
        while True:
            try:
                with self._connect() as conn:
                    # Until HAProxy's checks mark a demoted primary down, the primary port
                    # may still lead to it, now a replica a little behind the new primary.
                    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                    if row is None or row[0]:
                        raise psycopg.OperationalError("reached a replica through the primary port")
                    present = {r[0] for r in conn.execute(f"SELECT id FROM {self.table}").fetchall()}
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        return [i for i in acknowledged if i not in present]
