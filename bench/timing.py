"""Stopwatches, medians and ratios: the arithmetic every benchmark figure goes through.

A wall-clock number on a shared lab says little, so each figure is a ratio of a measured
duration to a floor measured in the same run; these helpers are pure so that the report and
its unit test can rely on them.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

_STARTED = time.monotonic()


def log(msg: str) -> None:
    """Progress on stderr, stamped with the run's elapsed time (a run takes ~30 minutes)."""
    elapsed = time.monotonic() - _STARTED
    print(f"bench [{int(elapsed) // 60:3d}:{int(elapsed) % 60:02d}] {msg}", file=sys.stderr, flush=True)


def median(values: Sequence[float]) -> float:
    """The median, which shrugs off one slow run on a busy machine better than the mean."""
    if not values:
        raise ValueError("median of no values")
    return float(statistics.median(values))


def ratio(measured: float | None, floor: float | None) -> float | None:
    """measured / floor, or None when either is missing or the floor is not a positive number."""
    if measured is None or floor is None or floor <= 0:
        return None
    return measured / floor


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """Run fn and return (its result, its wall-clock seconds on the monotonic clock)."""
    start = time.monotonic()
    result = fn()
    return result, time.monotonic() - start


def repeat(fn: Callable[[], Any], runs: int = 3) -> list[float]:
    """Seconds of each of `runs` calls of fn, in order."""
    return [timed(fn)[1] for _ in range(runs)]


def meets(value: float | None, goal: float | None) -> bool | None:
    """True/False against a `<= goal` target; None when there is no goal or no value."""
    if value is None or goal is None:
        return None
    return value <= goal


def figure(name: str, measured: float | None, floor: float | None, floor_label: str, *,
           goal: float | None = None, unit: str = "s") -> dict[str, Any]:
    """One reported figure: a measured value, the floor it is divided by (and what that floor
    is), their ratio and the goal for the ratio. JSON-ready."""
    value = ratio(measured, floor)
    return {
        "name": name,
        "measured": measured,
        "floor": floor,
        "floor_label": floor_label,
        "unit": unit,
        "ratio": value,
        "goal": goal,
        "meets_goal": meets(value, goal),
    }
