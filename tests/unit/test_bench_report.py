"""The benchmark's pure parts: medians and ratios, unavailability windows, report and charts.

No lab and no database: the results dict is made up here, shaped as bench/scenarios.py
returns it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from bench import report
from bench.recorder import Sample, longest, summarize, unavailability_windows, windows_after
from bench.timing import figure, median, meets, ratio

# -- timing ----------------------------------------------------------------------------------


def test_median_of_odd_and_even_counts() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert median([7.5]) == 7.5
    with pytest.raises(ValueError):
        median([])


def test_ratio_needs_a_positive_floor() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(None, 2.0) is None
    assert ratio(3.0, None) is None
    assert ratio(3.0, 0.0) is None
    assert ratio(3.0, -1.0) is None


def test_figure_carries_its_floor_ratio_and_goal() -> None:
    fig = figure("up", 12.0, 10.0, "the floor", goal=1.3)
    assert fig["ratio"] == pytest.approx(1.2)
    assert fig["meets_goal"] is True
    assert fig["floor"] == 10.0 and fig["floor_label"] == "the floor"
    assert figure("up", 14.0, 10.0, "f", goal=1.3)["meets_goal"] is False
    assert figure("up", 14.0, 10.0, "f")["meets_goal"] is None
    assert figure("up", 14.0, 0.0, "f", goal=1.3)["ratio"] is None
    assert meets(None, 1.0) is None
    json.dumps(fig)  # JSON-ready


# -- windows -----------------------------------------------------------------------------------


def steady(start: float, end: float, step: float = 0.02, latency_ms: float = 2.0,
           ok: bool = True) -> list[Sample]:
    n = round((end - start) / step)
    return [(round(start + i * step, 4), latency_ms, ok) for i in range(n)]


def test_no_window_while_every_write_is_acknowledged() -> None:
    assert unavailability_windows(steady(0.0, 5.0)) == []
    assert summarize(steady(0.0, 5.0))["longest_s"] == 0.0


def test_failed_writes_make_a_window_from_last_ack_to_next_ack() -> None:
    samples = steady(0.0, 1.0) + steady(1.0, 3.0, latency_ms=5.0, ok=False) + steady(3.0, 4.0)
    windows = unavailability_windows(samples)
    assert len(windows) == 1
    start, end = windows[0]
    assert start == pytest.approx(0.98 + 0.002)  # ack of the last good write
    assert end == pytest.approx(3.0 + 0.002)  # ack of the first good write after
    # Two seconds of failures read as 2.02 s: at most one interval more than the failures lasted.
    assert longest(windows) == pytest.approx(2.02)
    summary = summarize(samples)
    assert summary["failed"] == 100 and summary["acknowledged"] == 100 and summary["attempts"] == 200


def test_a_hung_write_that_succeeds_is_a_window_too() -> None:
    samples = [*steady(0.0, 1.0), (1.0, 2500.0, True), *steady(3.6, 4.0)]
    windows = unavailability_windows(samples, stall_s=1.0)
    assert windows == [(pytest.approx(0.982), pytest.approx(3.5))]
    assert unavailability_windows(samples, stall_s=5.0) == []


def test_leading_and_trailing_failures() -> None:
    leading = steady(0.0, 0.5, ok=False) + steady(0.5, 1.0)
    assert unavailability_windows(leading) == [(0.0, pytest.approx(0.502))]
    trailing = steady(0.0, 0.5) + steady(0.5, 1.0, latency_ms=10.0, ok=False)
    [(start, end)] = unavailability_windows(trailing)
    assert start == pytest.approx(0.482) and end == pytest.approx(0.98 + 0.010)
    assert unavailability_windows([(0.0, 3.0, False)]) == [(0.0, 0.003)]


def test_two_windows_longest_and_those_after_an_event() -> None:
    samples = (steady(0.0, 1.0) + steady(1.0, 1.5, ok=False) + steady(1.5, 3.0)
               + steady(3.0, 5.0, ok=False) + steady(5.0, 6.0))
    windows = unavailability_windows(samples)
    assert len(windows) == 2
    assert longest(windows) == pytest.approx(2.02)
    assert windows_after(windows, 2.0) == [windows[1]]
    assert len(summarize(samples, since=2.0)["windows"]) == 1


# -- report ------------------------------------------------------------------------------------


def fake_series(event_t: float = 2.0, chart: str = "switchover.png") -> dict[str, Any]:
    samples = steady(0.0, 2.0) + steady(2.0, 3.2, latency_ms=40.0, ok=False) + steady(3.2, 6.0)
    return {"event": "planned switchover pg1 → pg2", "event_t": event_t, "chart": chart,
            "interval_ms": 20.0, "samples": [list(s) for s in samples], "marks": [[event_t, "POST"]],
            "errors": {"server closed the connection unexpectedly": 60}, **summarize(samples, since=event_t)}


def fake_results() -> dict[str, Any]:
    crash = fake_series(chart="crash.png")
    crash["event"] = "leader crash (pg2, power pulled)"
    return {
        "meta": {"started": "2026-01-01T00:00:00+00:00", "commit": "abc1234", "pulumi": "v3.260.0"},
        "benchmarks": {
            "B1": {"id": "B1", "title": "First deploy", "about": "up vs floor", "error": None,
                   "figures": [figure("pulumi up from bare hosts", 131.2, 95.4,
                                      "wheelhouse + initdb + basebackup", goal=1.5)],
                   "details": {"floor": {"install_s": 60.1, "total_s": 95.4}}, "series": {},
                   "duration_s": 400.0},
            "B2": {"id": "B2", "title": "No-change", "about": "...", "error": None,
                   "figures": [figure("no-change pulumi preview, 3 nodes", 8.4, 3.1, "trivial", goal=1.3),
                               figure("preview ratio at 9 vs 3", 2.9, 2.7, "the ratio at 3 nodes", unit="×")],
                   "details": {"3_nodes": {"runs_s": {"real_preview": [8.1, 8.4, 9.0]}}}, "series": {}},
            "B3": {"id": "B3", "title": "Adding a replica", "about": "...", "figures": [], "details": {},
                   "series": {}, "error": "RuntimeError: pg5: pg_basebackup failed (1)"},
            "B4": {"id": "B4", "title": "Unavailability", "about": "...", "error": None,
                   "figures": [figure("write unavailability, planned switchover", 1.3, 2.1, "predicted"),
                               figure("write unavailability, leader crash", 27.0, 0.0, "predicted")],
                   "details": {}, "series": {"switchover": fake_series(), "crash": crash}},
        },
    }


def rows(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("| B")]


def test_every_figure_is_shown_as_a_ratio_with_its_floor() -> None:
    results = fake_results()
    markdown = report.render_markdown(results)
    table = rows(markdown)
    for ident, bench in results["benchmarks"].items():
        for fig in bench["figures"]:
            matching = [r for r in table if r.startswith(f"| {ident} | {fig['name']} |")]
            assert matching, f"{ident} {fig['name']} missing from the report"
            for row in matching:
                assert f"**{report.fmt_ratio(fig['ratio'])}**" in row
                assert f"{report.fmt_value(fig['floor'], fig['unit'])}: {fig['floor_label']}" in row
    assert "**1.38×**" in markdown and "95.4 s: wheelhouse" in markdown
    assert "≤ 1.5 (met)" in markdown and "≤ 1.3 (**missed**)" in markdown
    assert "**n/a**" in markdown  # a zero floor gives no ratio rather than a division by zero
    # No bare duration in the table: each figure row has exactly one ratio cell.
    for row in table:
        if "*failed:" not in row:
            assert len(re.findall(r"\*\*(?:\d+\.\d\d×|n/a)\*\*", row)) == 1, row


def test_failed_benchmark_and_charts_only_when_written() -> None:
    results = fake_results()
    without = report.render_markdown(results)
    assert "| B3 | *failed: RuntimeError: pg5: pg_basebackup failed (1)* |" in without
    assert "](switchover.png)" not in without
    with_charts = report.render_markdown(results, charts={"switchover.png", "crash.png"})
    assert "![planned switchover pg1 → pg2](switchover.png)" in with_charts
    assert "![leader crash (pg2, power pulled)](crash.png)" in with_charts
    assert "60× server closed the connection unexpectedly" in with_charts
    # Sections in B order whatever order the results came in.
    assert [m for m in re.findall(r"^## (B\d)", with_charts, re.M)] == ["B1", "B2", "B3", "B4"]


def test_failures_per_bin() -> None:
    samples = [[0.0, 1.0, True], [0.1, 1.0, False], [0.3, 1.0, False], [0.6, 1.0, False]]
    starts, counts = report.failures_per_bin(samples, width=0.25)
    assert starts == [0.0, 0.25, 0.5]
    assert counts == [1, 1, 1]
    assert report.failures_per_bin([]) == ([], [])


def test_write_report_files(tmp_path: Path) -> None:
    results = fake_results()
    paths = report.write_report(results, tmp_path / "out")
    assert (tmp_path / "out" / "report.md").read_text().startswith("# pgha benchmark report")
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == json.loads(json.dumps(results))
    assert set(paths) >= {"report.md", "report.json"}


def test_charts_are_pngs_when_matplotlib_is_installed(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    paths = report.write_report(fake_results(), tmp_path)
    for name in ("switchover.png", "crash.png"):
        assert name in paths
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "](crash.png)" in (tmp_path / "report.md").read_text()
    assert report.write_chart({"event": "empty", "samples": []}, tmp_path / "empty.png")


# -- where a deploy's time went (bench/events.py) --------------------------------------------


def _event(kind: str, urn_name: str, op: str = "create") -> dict[str, Any]:
    urn = f"urn:pulumi:lab::pgha::pgha:index:X$pgha:T::{urn_name}"
    if kind == "pre":
        return {"resourcePreEvent": {"metadata": {"op": op, "urn": urn}}}
    return {"resOutputsEvent": {"metadata": {"op": op, "urn": urn}}}


def test_spans_pair_each_changed_resource_start_with_its_outputs() -> None:
    from bench.events import spans

    events = [(0.5, _event("pre", "s-install-pg1")), (0.6, _event("pre", "s-etcd-pg1")),
              (0.7, _event("pre", "s-leader", op="same")), (0.8, _event("out", "s-leader", op="same")),
              (4.0, _event("out", "s-etcd-pg1")), (9.25, _event("out", "s-install-pg1")),
              (9.5, {"diagnosticEvent": {"message": "x"}})]
    assert spans(events) == {"s-install-pg1": (0.5, 9.25), "s-etcd-pg1": (0.6, 4.0)}


def test_phases_take_the_first_start_and_the_last_end_of_their_resources() -> None:
    from bench.events import phases

    found = phases({"s-install-pg1": (2.0, 12.0), "s-install-pg2-patroni": (3.0, 13.5),
                    "s-etcd-pg1": (2.1, 6.0), "s-etcd-membership": (2.0, 2.1),
                    "s-role-admin-password": (2.0, 2.1),
                    "s-role-admin": (18.0, 18.5), "s-bootstrap": (13.6, 17.0),
                    "s-node-pg2": (17.1, 21.0), "s-node-pg1": (17.1, 17.5)})
    assert found == {"install": "2.0–13.5 s", "etcd": "2.1–6.0 s", "bootstrap": "13.6–17.0 s",
                     "nodes": "17.1–21.0 s", "roles": "18.0–18.5 s"}


def test_event_tail_stamps_lines_as_they_are_written(tmp_path: Path) -> None:
    import time

    from bench.events import EventTail

    log = tmp_path / "events.jsonl"
    with EventTail(log) as tail:
        time.sleep(0.1)
        log.write_text(json.dumps(_event("pre", "a")) + "\n" + json.dumps(_event("out", "a"))[:10])
        time.sleep(0.1)
        with open(log, "a") as f:
            f.write(json.dumps(_event("out", "a"))[10:] + "\n")
    assert [sorted(e) for _, e in tail.events] == [["resourcePreEvent"], ["resOutputsEvent"]]
    assert 0.05 < tail.events[0][0] <= tail.events[1][0]
