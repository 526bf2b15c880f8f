"""The DCS settings: what a PATCH sends, what a refresh sees, and when no PATCH is needed."""

from __future__ import annotations

import copy
from typing import Any

from components import specs
from components.config import load_cluster_config
from components.providers.dynamic_config import config_patch, managed_view, needs_patch
from tests.unit.configs import lab_raw


def desired() -> dict[str, Any]:
    return specs.dynamic_config_spec(load_cluster_config(lab_raw(), set()))["dcs"]


def as_bootstrapped(dcs: dict[str, Any]) -> dict[str, Any]:
    """GET /config of a cluster seeded from bootstrap.dcs, with what Patroni adds on its own."""
    live = copy.deepcopy(dcs)
    live["postgresql"]["parameters"]["max_connections"] = 150  # YAML may hand back a number
    live["postgresql"]["parameters"]["unmanaged_by_pgha"] = "x"
    live["check_timeline"] = False
    return live


def test_a_freshly_bootstrapped_cluster_needs_no_patch() -> None:
    dcs = desired()
    assert managed_view(as_bootstrapped(dcs), dcs) == dcs
    assert not needs_patch(as_bootstrapped(dcs), None, dcs)


def test_a_changed_or_missing_setting_needs_a_patch() -> None:
    dcs = desired()
    live = as_bootstrapped(dcs)
    live["postgresql"]["parameters"]["shared_buffers"] = "256MB"
    assert needs_patch(live, dcs, dcs)
    live = as_bootstrapped(dcs)
    del live["loop_wait"]
    assert needs_patch(live, dcs, dcs)


def test_a_setting_dropped_from_the_stack_is_patched_away_only_while_live() -> None:
    old = desired()
    old["postgresql"]["parameters"]["log_min_duration_statement"] = "250ms"
    new = desired()
    live = as_bootstrapped(old)
    assert needs_patch(live, old, new)
    assert config_patch(old, new)["postgresql"]["parameters"]["log_min_duration_statement"] is None
    del live["postgresql"]["parameters"]["log_min_duration_statement"]
    assert not needs_patch(live, old, new)


def test_a_top_level_key_dropped_from_the_stack_is_sent_as_null() -> None:
    old, new = desired(), desired()
    del new["maximum_lag_on_failover"]
    patch = config_patch(old, new)
    assert patch["maximum_lag_on_failover"] is None
    assert needs_patch(as_bootstrapped(old), old, new)


def test_a_patch_carries_every_desired_value() -> None:
    dcs = desired()
    patch = config_patch(None, dcs)
    assert patch["ttl"] == dcs["ttl"]
    assert patch["postgresql"]["parameters"] == dcs["postgresql"]["parameters"]
    assert None not in patch["postgresql"]["parameters"].values()
