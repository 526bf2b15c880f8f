"""report.md, report.json and the PNG charts, from the results dict alone.

Pure apart from writing the files: no lab, no clock, no network, so that the rendering can be
unit-tested from a fake results dict. Every figure is printed as measured ÷ floor, with the
floor's value and what it is, never as a bare duration.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

ORDER = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8")
FAIL_BIN_S = 0.25


def fmt_value(value: float | None, unit: str = "s") -> str:
    if value is None:
        return "n/a"
    if unit == "×":
        return f"{value:.2f}×"
    return f"{value:.2f} {unit}" if abs(value) < 10 else f"{value:.1f} {unit}"


def fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}×"


def fmt_goal(fig: dict[str, Any]) -> str:
    goal = fig.get("goal")
    if goal is None:
        return "—"
    verdict = {True: "met", False: "**missed**", None: "n/a"}[fig.get("meets_goal")]
    return f"≤ {goal:g} ({verdict})"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def figure_row(ident: str, fig: dict[str, Any]) -> str:
    """One summary row: the ratio first-class, the floor's value and meaning beside it."""
    unit = fig.get("unit", "s")
    return (f"| {ident} | {_cell(fig['name'])} | {fmt_value(fig.get('measured'), unit)} | "
            f"{fmt_value(fig.get('floor'), unit)}: {_cell(fig.get('floor_label', ''))} | "
            f"**{fmt_ratio(fig.get('ratio'))}** | {fmt_goal(fig)} |")


def _fmt_detail(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, list) and all(isinstance(v, (int, float)) for v in value):
        return ", ".join(_fmt_detail(v) for v in value)
    if isinstance(value, (list, dict)):
        return f"`{json.dumps(value, default=str)}`"
    return str(value)


# Details too long for report.md (report.json keeps them).
JSON_ONLY = frozenset({"traceback", "up_spans"})


def _details(details: dict[str, Any], depth: int = 0) -> list[str]:
    lines = []
    for key, value in details.items():
        if key in JSON_ONLY:
            continue
        pad = "  " * depth
        if isinstance(value, dict) and depth < 2:
            lines.append(f"{pad}- {key}:")
            lines.extend(_details(value, depth + 1))
        else:
            lines.append(f"{pad}- {key}: {_fmt_detail(value)}")
    return lines


def _lag_lines(name: str, series: dict[str, Any], charts: Collection[str]) -> list[str]:
    """An archive-lag recording (B7): its worst values against archive_timeout, and the chart."""
    lines = [f"**{series.get('event', name)}** — {series.get('samples', 0)} samples: worst RPO "
             f"{fmt_value(series.get('worst_rpo_s'))} (archive_timeout "
             f"{fmt_value(series.get('archive_timeout_s'))}), at most "
             f"{series.get('worst_segments_behind', 'n/a')} complete segment(s) not yet archived."]
    chart = series.get("chart")
    if chart and chart in charts:
        lines.append(f"![{series.get('event', name)}]({chart})")
    return ["", *(f"{line}  " if i < len(lines) - 1 else line for i, line in enumerate(lines))]


def _series_lines(name: str, series: dict[str, Any], charts: Collection[str]) -> list[str]:
    if series.get("kind") == "archive_lag":
        return _lag_lines(name, series, charts)
    lines = [f"**{series.get('event', name)}** — through HAProxy, one insert every "
             f"{series.get('interval_ms', 20):.0f} ms: {series.get('attempts', 0)} writes, "
             f"{series.get('failed', 0)} failed, longest unavailability "
             f"{fmt_value(series.get('longest_s'))}, event at t = {series.get('event_t', 0):.2f} s."]
    windows = series.get("windows") or []
    if windows:
        lines.append("Unavailability windows (s): " + ", ".join(f"{a:.2f}–{b:.2f}" for a, b in windows))
    errors = series.get("errors") or {}
    if errors:
        lines.append("Errors seen: " + "; ".join(f"{count}× {_cell(msg)}" for msg, count in errors.items()))
    chart = series.get("chart")
    if chart and chart in charts:
        lines.append(f"![{series.get('event', name)}]({chart})")
    return ["", *(f"{line}  " if i < len(lines) - 1 else line for i, line in enumerate(lines))]


def render_markdown(results: dict[str, Any], charts: Collection[str] = ()) -> str:
    """The report: a summary table of ratios, then each benchmark's details and charts."""
    meta = results.get("meta", {})
    benches = results.get("benchmarks", {})
    out = ["# pgha benchmark report", ""]
    facts = [f"{k}: {v}" for k, v in meta.items() if v not in (None, "")]
    if facts:
        out += ["Run — " + "; ".join(facts) + ".", ""]
    out += ["Every figure is a ratio: measured ÷ a floor measured in the same run, on the same lab "
            "(absolute durations on a shared machine say little). Goals are `ratio ≤ goal`.", "",
            "## Summary", "",
            "| | figure | measured | floor | ratio | goal |",
            "|---|---|---|---|---|---|"]
    for ident in [i for i in ORDER if i in benches] + [i for i in benches if i not in ORDER]:
        bench = benches[ident]
        for fig in bench.get("figures", []):
            out.append(figure_row(ident, fig))
        if bench.get("error"):
            out.append(f"| {ident} | *failed: {_cell(bench['error'][:300])}* | | | | |")
        elif not bench.get("figures"):
            out.append(f"| {ident} | *no figures* | | | | |")
    for ident in [i for i in ORDER if i in benches] + [i for i in benches if i not in ORDER]:
        bench = benches[ident]
        out += ["", f"## {ident} — {bench.get('title', '')}", "", bench.get("about", "")]
        if bench.get("duration_s") is not None:
            out += ["", f"Took {fmt_value(bench['duration_s'])} in this run."]
        if bench.get("error"):
            out += ["", f"**Failed:** `{_cell(bench['error'][:1500])}`"]
        if bench.get("figures"):
            out += ["", "| | figure | measured | floor | ratio | goal |", "|---|---|---|---|---|---|"]
            out += [figure_row(ident, fig) for fig in bench["figures"]]
        for name, series in (bench.get("series") or {}).items():
            out += _series_lines(name, series, charts)
        details = bench.get("details") or {}
        if any(k != "traceback" for k in details):
            out += ["", "Details:", "", *_details(details)]
    return "\n".join(out) + "\n"


def render_json(results: dict[str, Any]) -> str:
    return json.dumps(results, indent=1, default=str) + "\n"


def failures_per_bin(samples: list[Any], width: float = FAIL_BIN_S) -> tuple[list[float], list[int]]:
    """Failed writes counted per `width` seconds: (bin starts, counts), for the lower chart."""
    if not samples:
        return [], []
    end = max(s[0] for s in samples)
    bins = int(end // width) + 1
    counts = [0] * bins
    for t, _, ok in samples:
        if not ok:
            counts[int(t // width)] += 1
    return [i * width for i in range(bins)], counts


def write_lag_chart(series: dict[str, Any], path: Path) -> None:
    """B7: the RPO (s) over time with archive_timeout and the goal marked, segments behind below."""
    import matplotlib.pyplot as plt

    points = series.get("points") or []
    timeout = series.get("archive_timeout_s") or 0.0
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(11, 5.5),
                                      gridspec_kw={"height_ratios": [3, 1]})
    top.plot([p[0] for p in points], [p[1] for p in points], color="tab:blue", linewidth=1,
             label="age of the oldest WAL not in the repository")
    if timeout:
        top.axhline(timeout, color="black", linestyle="--", linewidth=1,
                    label=f"archive_timeout {timeout:g} s")
        top.axhline(1.5 * timeout, color="tab:red", linestyle=":", linewidth=1,
                    label="goal: 1.5 × archive_timeout")
    top.set_ylabel("RPO (s)")
    top.set_ylim(bottom=0)
    bottom.step([p[0] for p in points], [p[2] for p in points], where="post", color="tab:orange")
    bottom.set_ylabel("segments behind")
    bottom.set_xlabel("seconds since the measurement started")
    for axis in (top, bottom):
        axis.grid(True, alpha=0.3)
    worst = series.get("worst_rpo_s")
    top.set_title(f"{series.get('event', '')}: worst RPO "
                  f"{'n/a' if worst is None else f'{worst:.2f} s'}", fontsize=10)
    top.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_chart(series: dict[str, Any], path: Path) -> bool:
    """Write latency (ms) and failed writes over time, event and windows marked (an archive-lag
    recording: its RPO chart). False without matplotlib (imported here, so that the rest of
    the bench does not need it)."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if series.get("kind") == "archive_lag":
        write_lag_chart(series, path)
        return True

    samples = series.get("samples") or []
    ok = [(s[0], s[1]) for s in samples if s[2]]
    bad = [(s[0], s[1]) for s in samples if not s[2]]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(11, 6.5),
                                      gridspec_kw={"height_ratios": [3, 1]})
    if ok:
        top.scatter([t for t, _ in ok], [lat for _, lat in ok], s=4, color="tab:blue",
                    label="acknowledged write")
    if bad:
        top.scatter([t for t, _ in bad], [lat for _, lat in bad], s=16, marker="x", color="tab:red",
                    label="failed write (time until the error)")
    if ok or bad:
        top.set_yscale("log")
    top.set_ylabel("write latency (ms)")
    starts, counts = failures_per_bin(samples)
    bottom.bar(starts, counts, width=FAIL_BIN_S, align="edge", color="tab:red")
    bottom.set_ylabel(f"failed / {FAIL_BIN_S:g} s")
    bottom.set_xlabel("seconds since the recording started")
    for axis in (top, bottom):
        for i, (start, end) in enumerate(series.get("windows") or []):
            axis.axvspan(start, end, color="tab:red", alpha=0.12, linewidth=0,
                         label="no write acknowledged" if i == 0 and axis is top else None)
        axis.axvline(series.get("event_t", 0.0), color="black", linestyle="--", linewidth=1,
                     label=f"event: {series.get('event', '')}" if axis is top else None)
        axis.grid(True, alpha=0.3)
    longest = series.get("longest_s") or 0.0
    top.set_title(f"{series.get('event', '')}: longest write unavailability {longest:.2f} s, "
                  f"{series.get('failed', 0)} of {series.get('attempts', 0)} writes failed (through HAProxy)",
                  fontsize=10)
    top.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(results: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Charts first (the Markdown links only those written), then report.md and report.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for bench in results.get("benchmarks", {}).values():
        for series in (bench.get("series") or {}).values():
            chart = series.get("chart")
            if chart and write_chart(series, out_dir / chart):
                written[chart] = out_dir / chart
    md = out_dir / "report.md"
    md.write_text(render_markdown(results, charts=set(written)))
    js = out_dir / "report.json"
    js.write_text(render_json(results))
    return {"report.md": md, "report.json": js, **written}
