"""B6 and B7's pure parts: the archive-lag arithmetic, the restore floor's shell text, the
archive-lag part of the report.

No lab and no database: samples and outputs are made up here, shaped as the sampler and the
hosts produce them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench import floors, report
from bench.archive import (
    ArchiveSample,
    archived_segment,
    lag_series,
    parse_lsn,
    rate_since,
    segment_number,
    summarize_lag,
)
from bench.deploy import BACKUP, cluster_config, lab_base_config
from bench.timing import figure

SEG = 16 * 1024 * 1024  # the default 16 MB segment


def name(segment: int, timeline: int = 1) -> str:
    per_log = 0x100000000 // SEG
    return f"{timeline:08X}{segment // per_log:08X}{segment % per_log:08X}"


# -- WAL names and positions -------------------------------------------------------------------


def test_lsn_and_segment_names() -> None:
    assert parse_lsn("0/3000000") == 3 * SEG
    assert parse_lsn("16/B374D848") == (0x16 << 32) + 0xB374D848
    with pytest.raises(ValueError):
        parse_lsn("3000000")
    assert segment_number("000000010000000000000003", SEG) == 3
    assert segment_number("000000020000000100000002", SEG) == 256 + 2  # 256 segments per 4 GiB
    assert segment_number("000000010000000100000002", 64 * 1024 * 1024) == 64 + 2
    assert segment_number(name(300), SEG) == 300
    with pytest.raises(ValueError):
        segment_number("00000002.history", SEG)


def test_archived_segment_ignores_history_files_and_reads_suffixed_names() -> None:
    assert archived_segment(None, SEG) is None
    assert archived_segment("", SEG) is None
    assert archived_segment("00000002.history", SEG) is None
    assert archived_segment("000000010000000000000005.00000028.backup", SEG) == 5
    assert archived_segment("000000010000000000000005.partial", SEG) == 5


# -- RPO ---------------------------------------------------------------------------------------


def test_light_load_rpo_grows_until_the_timeout_switch_is_archived() -> None:
    """Segment 5 archived; the primary writes into 6 from t=0; archive_timeout switches at t=10
    and 6 is archived at t=10.5: the oldest unarchived byte is 10.5 s old just before."""
    samples: list[ArchiveSample] = []
    for i in range(0, 45):
        t = i * 0.25
        if t < 10.5:
            lsn, current, archived = 6 * SEG + 1000 + i * 100, name(6), name(5)
        else:
            lsn, current, archived = 7 * SEG + (i - 42) * 100, name(7), name(6)
        samples.append((t, lsn, current, archived))
    # One sample at exactly the boundary first: the segment 6 start was written after t = 0.
    samples.insert(0, (-0.25, 6 * SEG, name(5), name(5)))
    series = lag_series(samples, SEG)
    assert series[0]["rpo_s"] == 0.0  # at the boundary: nothing unarchived
    just_before = next(s for s in series if s["t"] == 10.25)
    assert just_before["rpo_s"] == pytest.approx(10.5)  # since the last sample before the boundary
    assert just_before["segments_behind"] == 0  # only the segment being written
    after = next(s for s in series if s["t"] == 10.5)
    assert after["rpo_s"] == 0.0  # at 7's very start: nothing unarchived yet
    later = next(s for s in series if s["t"] == 10.75)
    assert later["rpo_s"] == pytest.approx(0.25)
    summary = summarize_lag(series)
    assert summary["worst_rpo_s"] == pytest.approx(10.5)
    assert summary["worst_segments_behind"] == 0
    assert summary["worst_is_lower_bound"] is False


def test_heavy_load_counts_complete_segments_not_archived() -> None:
    samples: list[ArchiveSample] = [
        (0.0, 10 * SEG, name(9), name(9)),  # caught up, at a boundary
        (1.0, 12 * SEG + 5, name(12), name(9)),  # 10 and 11 complete, not archived
        (2.0, 13 * SEG + 5, name(13), name(11)),
        (3.0, 13 * SEG + 9, name(13), name(12)),
    ]
    series = lag_series(samples, SEG)
    assert [s["segments_behind"] for s in series] == [0, 2, 1, 0]
    # At t=1 the first unarchived byte (start of 10) was written after t=0.
    assert series[1]["rpo_s"] == pytest.approx(1.0)
    # At t=2, 11 archived: the first unarchived byte is 12's start, written after t=0
    # (at t=1 the position was past it already).
    assert series[2]["rpo_s"] == pytest.approx(2.0)
    # At t=3, 12 archived: 13's start was passed between t=1 and t=2.
    assert series[3]["rpo_s"] == pytest.approx(2.0)


def test_rpo_before_the_first_sample_is_a_lower_bound_and_unknown_archive_is_none() -> None:
    samples: list[ArchiveSample] = [
        (0.0, 4 * SEG + 10, name(4), None),  # nothing archived yet: no figure
        (1.0, 4 * SEG + 20, name(4), name(2)),  # 3 not archived, its start before any sample
        (2.0, 4 * SEG + 30, name(4), "00000002.history"),  # a history file: keep the last segment
    ]
    series = lag_series(samples, SEG)
    assert series[0]["rpo_s"] is None and series[0]["segments_behind"] is None
    assert series[1]["lower_bound"] is True and series[1]["rpo_s"] == pytest.approx(1.0)
    assert series[2]["segments_behind"] == 1 and series[2]["rpo_s"] == pytest.approx(2.0)
    summary = summarize_lag(series)
    assert summary["worst_is_lower_bound"] is True
    assert summary["samples"] == 2
    assert summarize_lag(series, since=5.0)["worst_rpo_s"] is None


# -- B6's floor --------------------------------------------------------------------------------


def test_restore_floor_conf_points_at_the_repository_host_through_the_scratch_ssh() -> None:
    conf = floors.restore_floor_conf("10.77.0.15", "pgbackrest", "pgha-lab", 2, scratch="/s")
    lines = conf.splitlines()
    assert "repo1-host=10.77.0.15" in lines and "repo1-host-user=pgbackrest" in lines
    assert "cmd-ssh=/s/ssh/ssh" in lines and "process-max=2" in lines
    assert lines[lines.index("[pgha-lab]") + 1] == "pg1-path=/s/data"
    assert "cipher" not in conf  # the repository host decrypts
    wrapper = floors.restore_ssh_wrapper("/s")
    assert wrapper.startswith("#!/bin/sh\nexec ssh -i /s/ssh/id ") and "StrictHostKeyChecking=yes" in wrapper


def test_restore_script_restores_the_set_then_waits_for_a_writable_server() -> None:
    script = floors.restore_script("/usr/lib/postgresql/15/bin", "pgha-lab", "20261127-010203F",
                                   scratch="/s", port=5499)
    assert script.startswith("cd /tmp && sudo -u postgres sh -c ")
    assert "--stanza=pgha-lab --set=20261127-010203F restore" in script
    assert "archive_mode=off" in script and "port=5499" in script
    assert "pg_is_in_recovery" in script and "CREATE TABLE" in script  # writable, not just up
    assert script.index("restore &&") < script.index("pg_ctl") < script.index("echo elapsed")
    assert floors.trust_key_script("/home/pgbackrest", "ssh-ed25519 AAAAkey postgres@pg6").endswith(
        "| sudo tee -a /home/pgbackrest/.ssh/authorized_keys >/dev/null")
    line = floors.trust_key_script("/h", "ssh-ed25519 AAAAkey c")
    assert f"restrict ssh-ed25519 AAAAkey {floors.RESTORE_KEY_TAG}" in line
    assert floors.RESTORE_KEY_TAG in floors.untrust_key_script("/h")


def test_parse_restore_and_pgbackrest_durations() -> None:
    out = "elapsed 100.0 130.5 134.0\n123456789\t/s/data\n"
    parsed = floors.parse_restore(out)
    assert parsed["restore_s"] == pytest.approx(30.5)
    assert parsed["start_s"] == pytest.approx(3.5)
    assert parsed["total_s"] == pytest.approx(34.0)
    assert floors.parse_restore("123 /s/data")["bytes"] == 123
    log = ("2026-11-27 INFO: restore command begin 2.45\n"
           "2026-11-27 INFO: restore command end: completed successfully (1234ms)\n"
           "2026-11-27 INFO: restore command end: completed successfully (5678ms)\n"
           "2026-11-27 INFO: archive-get command end: completed successfully (9ms)\n")
    assert floors.command_end_ms(log, "restore") == 5678
    assert floors.command_end_ms(log, "archive-get") == 9
    assert floors.command_end_ms("", "restore") is None
    assert floors.pg_quote("it's") == "'it''s'"


def test_backup_layout_has_a_repository_host_and_a_short_archive_timeout() -> None:
    config = BACKUP.config(lab_base_config())
    model = cluster_config(config)
    assert [h.name for h in model.with_role("backup")] == ["pg5"]
    assert model.backup is not None and model.backup.archive_timeout == "10s"
    assert BACKUP.lab_hosts == 8  # pg6, pg7, pg8 boot bare: the floor, the clone, a second clone
    assert {h.name for h in model.hosts} == {"pg1", "pg2", "pg3", "pg4", "pg5"}


# -- B7's report -------------------------------------------------------------------------------


def lag_results() -> dict[str, Any]:
    points = [[i * 0.25, (i * 0.25) % 10.4, 0] for i in range(240)]
    series = {"kind": "archive_lag", "event": "archive lag, light load", "chart": "archive_lag_light.png",
              "points": points, "archive_timeout_s": 10.0, "worst_rpo_s": 10.25, "worst_segments_behind": 0,
              "samples": 240}
    return {"meta": {}, "benchmarks": {"B7": {
        "id": "B7", "title": "Archive lag", "about": "...", "error": None,
        "figures": [figure("worst RPO, light load", 10.25, 10.0, "archive_timeout", goal=1.5)],
        "details": {"light": {"worst_rpo_s": 10.25}}, "series": {"lag_light": series}}}}


def test_archive_lag_series_is_reported_by_its_worst_rpo() -> None:
    markdown = report.render_markdown(lag_results(), charts={"archive_lag_light.png"})
    row = "| B7 | worst RPO, light load | 10.2 s | 10.0 s: archive_timeout | **1.02×** | ≤ 1.5 (met) |"
    assert row in markdown
    assert ("**archive lag, light load** — 240 samples: worst RPO 10.2 s (archive_timeout 10.0 s), "
            "at most 0 complete segment(s) not yet archived.") in markdown
    assert "![archive lag, light load](archive_lag_light.png)" in markdown
    assert "writes," not in markdown  # not rendered as a write recording


def test_archive_lag_chart_is_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    paths = report.write_report(lag_results(), tmp_path)
    assert (tmp_path / "archive_lag_light.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "archive_lag_light.png" in paths


def test_wal_rate_since_the_measurement_started() -> None:
    points = [(0.0, 0), (5.0, 100), (10.0, 1100), (20.0, 3100)]
    assert rate_since(points, 10.0) == pytest.approx(200.0)
    assert rate_since(points, 0.0) == pytest.approx(155.0)
    assert rate_since(points, 15.0) is None  # one point: no rate
    assert rate_since([], 0.0) is None
