"""When each resource of a `pulumi up` started and finished, from the engine's event log.

The engine writes one JSON event per line to `--event-log FILE` as it goes, but stamps them
in whole seconds; EventTail reads the file while the `up` runs and stamps each line itself
(to ~20 ms), so that a benchmark can say which steps its time went to. `spans` is pure.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

POLL_S = 0.02


class EventTail:
    """Collect (seconds since start, event) from an event log being written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[tuple[float, dict[str, Any]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._start = 0.0

    def __enter__(self) -> EventTail:
        self._start = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        buffer = ""
        offset = 0
        while True:
            stopping = self._stop.is_set()
            try:
                with open(self.path, encoding="utf-8") as f:
                    f.seek(offset)
                    chunk = f.read()
                    offset = f.tell()
            except FileNotFoundError:
                chunk = ""
            now = time.monotonic() - self._start
            buffer += chunk
            *lines, buffer = buffer.split("\n")
            for line in lines:
                if line.strip():
                    self.events.append((now, json.loads(line)))
            if stopping:
                return
            time.sleep(POLL_S)


def _name(urn: str) -> str:
    return urn.rsplit("::", 1)[-1]


def spans(events: Iterable[tuple[float, dict[str, Any]]]) -> dict[str, tuple[float, float]]:
    """{resource name: (start s, end s)} of the resources the `up` changed (created, updated, ...).

    Start is the engine's resourcePreEvent, end its resOutputsEvent (or resOpFailedEvent).
    """
    started: dict[str, float] = {}
    out: dict[str, tuple[float, float]] = {}
    for at, event in events:
        pre = event.get("resourcePreEvent")
        if pre and pre["metadata"].get("op") not in ("same", "read"):
            started[pre["metadata"]["urn"]] = at
        done = event.get("resOutputsEvent") or event.get("resOpFailedEvent")
        if done:
            urn = done["metadata"]["urn"]
            if urn in started:
                out[_name(urn)] = (round(started[urn], 2), round(at, 2))
    return out


# A deploy's resources by what they do, in the order they come (names end like this).
PHASES = (("install", "-install-"), ("etcd", "-etcd-"), ("dcs", "-cluster"), ("bootstrap", "-bootstrap"),
          ("nodes", "-node-"), ("haproxy", "-haproxy-"), ("roles", "-role-"),
          ("dynamic config", "-dynamic-config"), ("leader", "-leader"))


# Resources that do no host work of their phase: generated secrets, the membership guard.
_NOT_A_STEP = ("-password", "-membership")


def phases(spans: dict[str, tuple[float, float]]) -> dict[str, str]:
    """{phase: "start–end s"}: when the first resource of each phase started and the last ended."""
    out: dict[str, str] = {}
    for phase, marker in PHASES:
        found = [(a, b) for name, (a, b) in spans.items()
                 if marker in name and not name.endswith(_NOT_A_STEP)]
        if found:
            out[phase] = f"{min(a for a, _ in found):.1f}–{max(b for _, b in found):.1f} s"
    return out
