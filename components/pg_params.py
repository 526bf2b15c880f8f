"""Types of the PostgreSQL parameters operators set most, so that a wrong value
fails at preview instead of leaving PostgreSQL unable to start on every node.

Parameters not listed here are passed through as long as they are scalars
(extensions bring their own). ``RESTART_REQUIRED`` lists postmaster-context
parameters, whose change needs a restart (PostgreSQL 15's pg_settings).
"""

from __future__ import annotations

import re
from typing import Any

MEMORY_RE = re.compile(r"^\d+(\.\d+)?\s*(B|kB|MB|GB|TB)?$")
TIME_RE = re.compile(r"^-?\d+(\.\d+)?\s*(us|ms|s|min|h|d)?$")
BOOL_WORDS = {"on", "off", "true", "false", "yes", "no", "1", "0"}

INTEGER = "integer"
BOOLEAN = "boolean"
MEMORY = "memory"
TIME = "time"
STRING = "string"
REAL = "real"

TYPES: dict[str, str | tuple[str, ...]] = {
    "max_connections": INTEGER,
    "superuser_reserved_connections": INTEGER,
    "max_wal_senders": INTEGER,
    "max_replication_slots": INTEGER,
    "max_worker_processes": INTEGER,
    "max_parallel_workers": INTEGER,
    "max_parallel_workers_per_gather": INTEGER,
    "max_locks_per_transaction": INTEGER,
    "max_prepared_transactions": INTEGER,
    "autovacuum_max_workers": INTEGER,
    "log_min_duration_statement": TIME,
    "log_autovacuum_min_duration": TIME,
    "wal_keep_size": MEMORY,
    "max_wal_size": MEMORY,
    "min_wal_size": MEMORY,
    "shared_buffers": MEMORY,
    "work_mem": MEMORY,
    "maintenance_work_mem": MEMORY,
    "effective_cache_size": MEMORY,
    "wal_buffers": MEMORY,
    "temp_buffers": MEMORY,
    "checkpoint_timeout": TIME,
    "archive_timeout": TIME,
    "wal_sender_timeout": TIME,
    "wal_receiver_timeout": TIME,
    "statement_timeout": TIME,
    "idle_in_transaction_session_timeout": TIME,
    "lock_timeout": TIME,
    "deadlock_timeout": TIME,
    "checkpoint_completion_target": REAL,
    "random_page_cost": REAL,
    "hot_standby": BOOLEAN,
    "hot_standby_feedback": BOOLEAN,
    "wal_log_hints": BOOLEAN,
    "logging_collector": BOOLEAN,
    "log_checkpoints": BOOLEAN,
    "log_connections": BOOLEAN,
    "log_disconnections": BOOLEAN,
    "log_lock_waits": BOOLEAN,
    "fsync": BOOLEAN,
    "full_page_writes": BOOLEAN,
    "track_io_timing": BOOLEAN,
    "wal_compression": ("off", "on", "pglz", "lz4", "zstd"),
    "archive_mode": ("off", "on", "always"),
    "wal_level": ("minimal", "replica", "logical"),
    "synchronous_commit": ("off", "local", "remote_write", "remote_apply", "on"),
    "log_statement": ("none", "ddl", "mod", "all"),
    "archive_command": STRING,
    "shared_preload_libraries": STRING,
    "timezone": STRING,
    "log_timezone": STRING,
    "log_line_prefix": STRING,
    "log_directory": STRING,
    "log_filename": STRING,
    "password_encryption": ("md5", "scram-sha-256"),
}

RESTART_REQUIRED = frozenset({
    "shared_buffers", "max_connections", "max_wal_senders", "max_replication_slots",
    "max_worker_processes", "max_locks_per_transaction", "max_prepared_transactions",
    "wal_level", "archive_mode", "shared_preload_libraries", "wal_buffers", "hot_standby",
    "autovacuum_max_workers", "logging_collector", "superuser_reserved_connections",
    "wal_log_hints", "max_parallel_workers", "track_commit_timestamp", "listen_addresses",
    "port", "huge_pages",
})


def check_parameter(name: str, value: Any) -> str | None:
    """Return why ``value`` is wrong for ``name``, or None when it is acceptable."""
    if not re.fullmatch(r"[a-z_][a-z0-9_.]*", name):
        return f"{name!r} is not a PostgreSQL parameter name"
    if isinstance(value, (dict, list)) or value is None:
        return f"must be a scalar value, got {type(value).__name__}"
    kind = TYPES.get(name)
    text = str(value).strip() if not isinstance(value, bool) else ("on" if value else "off")
    if kind is None or kind == STRING:
        return None
    if isinstance(kind, tuple):
        if text.lower() not in kind:
            return f"{value!r} is not one of {', '.join(kind)}"
        return None
    if kind == INTEGER:
        if isinstance(value, bool) or not re.fullmatch(r"-?\d+", text):
            return f"must be an integer, got {value!r}"
    elif kind == BOOLEAN:
        if text.lower() not in BOOL_WORDS:
            return f"must be a boolean (on/off), got {value!r}"
    elif kind == MEMORY:
        if isinstance(value, bool) or not MEMORY_RE.match(text):
            return f"must be a size like 128MB or a number of blocks, got {value!r}"
    elif kind == TIME:
        if isinstance(value, bool) or not TIME_RE.match(text):
            return f"must be a duration like 30s or 5min, got {value!r}"
    elif kind == REAL:
        try:
            float(text)
        except ValueError:
            return f"must be a number, got {value!r}"
    return None
