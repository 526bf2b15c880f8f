"""PostgreSQL parameter types: a wrong value must fail at preview, not stop PostgreSQL on every node."""

from __future__ import annotations

from typing import Any

import pytest

from components.pg_params import RESTART_REQUIRED, check_parameter

GOOD = [
    ("max_connections", 150),
    ("max_connections", "150"),
    ("max_wal_senders", " 10 "),
    ("shared_buffers", "128MB"),
    ("shared_buffers", "128 MB"),
    ("shared_buffers", 16384),
    ("work_mem", "4096kB"),
    ("effective_cache_size", "4GB"),
    ("checkpoint_timeout", "5min"),
    ("statement_timeout", "30s"),
    ("statement_timeout", 0),
    ("log_min_duration_statement", -1),
    ("log_min_duration_statement", "250ms"),
    ("hot_standby", "on"),
    ("hot_standby", "OFF"),
    ("hot_standby", True),
    ("wal_log_hints", "true"),
    ("fsync", 1),
    ("wal_level", "logical"),
    ("wal_level", "REPLICA"),
    ("synchronous_commit", "Remote_Apply"),
    ("archive_mode", True),
    ("password_encryption", "scram-sha-256"),
    ("checkpoint_completion_target", 0.9),
    ("random_page_cost", "1.1"),
    ("shared_preload_libraries", "pg_stat_statements,auto_explain"),
    ("pg_stat_statements.max", 10000),  # an extension's parameter: passed through
]

BAD = [
    ("max_connections", "lots", "must be an integer"),
    ("max_connections", "150.5", "must be an integer"),
    ("max_connections", True, "must be an integer"),
    ("shared_buffers", "big", "must be a size"),
    ("shared_buffers", "128mb", "must be a size"),  # PostgreSQL units are case-sensitive
    ("shared_buffers", False, "must be a size"),
    ("checkpoint_timeout", "5 minutes", "must be a duration"),
    ("hot_standby", "maybe", "must be a boolean"),
    ("wal_level", "verbose", "is not one of minimal, replica, logical"),
    ("password_encryption", "plain", "is not one of"),
    ("random_page_cost", "cheap", "must be a number"),
    ("work_mem", None, "must be a scalar"),
    ("work_mem", {"value": "4MB"}, "must be a scalar"),
    ("Max_Connections", 100, "is not a PostgreSQL parameter name"),
    ("max connections", 100, "is not a PostgreSQL parameter name"),
]


@pytest.mark.parametrize(("name", "value"), GOOD, ids=[f"{n}={v!r}" for n, v in GOOD])
def test_accepts_good_values(name: str, value: Any) -> None:
    """Values PostgreSQL accepts must not be refused by pgha."""
    assert check_parameter(name, value) is None


@pytest.mark.parametrize(("name", "value", "fragment"), BAD, ids=[f"{n}={v!r}" for n, v, _ in BAD])
def test_rejects_bad_values(name: str, value: Any, fragment: str) -> None:
    """Values PostgreSQL would refuse at start-up are reported with the reason."""
    why = check_parameter(name, value)
    assert why is not None
    assert fragment in why


def test_restart_required_lists_postmaster_parameters() -> None:
    """shared_buffers needs a restart; work_mem is a reload (user) setting."""
    assert "shared_buffers" in RESTART_REQUIRED
    assert "max_connections" in RESTART_REQUIRED
    assert "wal_level" in RESTART_REQUIRED
    assert "work_mem" not in RESTART_REQUIRED
    assert "statement_timeout" not in RESTART_REQUIRED


@pytest.mark.parametrize(("name", "value"), [("shared_buffers", "1.5GB"), ("statement_timeout", "0.5s")])
def test_accepts_fractional_values_with_units(name: str, value: str) -> None:
    """postgresql.org/docs/15/config-setting.html: a fractional value with a unit is rounded, not refused."""
    assert check_parameter(name, value) is None
