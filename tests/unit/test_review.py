"""python -m review over recorded `pulumi preview --json` output.

The fixtures in tests/fixtures/previews are real previews of the lab stack (3 etcd+Patroni
hosts, HAProxy on pg4; pg1 leads as of the last up), recorded by record.py there. A few tests
change one field of a recorded preview (a leader recorded by a refresh, a stored
keepDataOnDestroy: false, synchronous mode) to reach a branch the lab's state cannot; each
says which field.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from review.__main__ import main
from review.markdown import MAX_COMMENT, Row, code, marker, render, table_rows
from review.plan import Plan, build_plan, etcd_shape, quorum, tolerated
from review.preview import SAME, Preview, Step, parse_preview
from review.properties import SECRET_SIG, SECRET_SIG_KEY, diff_inputs, ignored_keys, text
from review.resources import named, scope_of
from tests.conftest import ROOT, PulumiCli

FIXTURES = ROOT / "tests" / "fixtures" / "previews"
SCENARIOS = sorted(p.stem for p in FIXTURES.glob("*.json"))
FAILED = {"invalid-config", "etcd-majority-removal", "policy-mandatory"}
RECORDED_SECRET = "recorded-fixture-secret-41c7"  # what record.py set as pgha:superuserPassword


def load(name: str) -> Preview:
    return parse_preview((FIXTURES / f"{name}.json").read_text())


def plan_of(name: str) -> Plan:
    return build_plan(load(name))


def comment(name: str, with_diff: bool = False) -> str:
    preview = load(name)
    diff = (FIXTURES / f"{name}.diff").read_text() if with_diff else ""
    return render(preview, build_plan(preview), "lab", diff)


def concerns(plan: Plan) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for concern in plan.concerns:
        found.setdefault(concern.topic, []).append(concern.text)
    return found


def edit_step(preview: Preview, urn_suffix: str, **fields: Any) -> Preview:
    """The preview with one step's fields replaced (old_outputs, old_inputs, new_inputs...)."""
    steps = tuple(dataclasses.replace(s, **fields) if s.urn.endswith(urn_suffix) else s
                  for s in preview.steps)
    return dataclasses.replace(preview, steps=steps)


# --- every recorded scenario ------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in SCENARIOS if n not in FAILED])
def test_every_scenario_renders_without_secrets_or_provider_blobs(name: str) -> None:
    raw = (FIXTURES / f"{name}.json").read_text()
    assert RECORDED_SECRET not in raw, "a recorded fixture holds a secret in plaintext"
    out = comment(name, with_diff=True)
    assert out.startswith(marker("lab") + "\n## pgha preview: `lab`")
    assert RECORDED_SECRET not in out
    assert "__provider" not in out
    assert len(out) <= MAX_COMMENT + 1000
    summary = comment(name)
    assert "[secret]" not in summary, "the summary shows a secret's blinded value instead of 'changed'"


@pytest.mark.parametrize("name", [n for n in SCENARIOS if n not in FAILED and n != "upgrade-add-replica"])
def test_leaf_changes_agree_with_the_engines_detailed_diff(name: str) -> None:
    """Where the engine computed a property diff, every changed property it names is in the table."""
    preview = load(name)
    rows = table_rows(preview)
    scope = scope_of(preview)
    for step in preview.changes:
        if not step.detailed_diff or step.kind == "MembershipGuard":
            continue
        props = " ".join(r.prop for r in rows if r.resource == str(named(step, scope)))
        for path in step.detailed_diff:
            top = path.split("[", 1)[0].split(".", 1)[0]
            if top in ignored_keys(step.kind):
                continue  # create-only for the provider (routing): the engine still lists it
            assert top in props, f"{step.kind} {step.name}: {path} missing from {props}"


# --- scenarios, one by one ----------------------------------------------------------------------


def test_no_change() -> None:
    plan = plan_of("no-change")
    assert plan.no_changes and not plan.lines and not plan.concerns
    out = comment("no-change")
    assert "**No changes.** `pulumi up` would not touch any host." in out
    assert "### Changes" not in out


def test_new_stack_bootstraps_and_interrupts_nothing() -> None:
    plan = plan_of("new-stack")
    assert plan.lines == (
        "etcd: pg1, pg2, pg3 found a new cluster together (3 members, quorum 2, tolerates 1 failure)",
        "Patroni 4.1.5 installed (wheelhouse) on pg1, pg2, pg3",
        "Patroni: pg1 bootstraps a new cluster (initdb) and leads; pg2, pg3 then clone from it and stream",
        "HAProxy on pg4: haproxy.cfg written, checked (`haproxy -c`) and started; `up` waits for exactly one "
        "primary UP",
        "passwords are generated for replication, restapi, rewind, role admin, superuser (kept encrypted in "
        "the state)",
        "role admin created on the leader (CREATEDB CREATEROLE LOGIN) with its password (SCRAM verifier)",
    )
    assert plan.concerns == ()
    assert plan.expect == "Expect a new cluster: there is nothing to interrupt."
    assert "**33 to create**" in comment("new-stack")
    # A host's install is one row, its steps named.
    rows = [r for r in table_rows(load("new-stack")) if r.resource.startswith("Install")]
    assert [r.resource for r in rows] == ["Install pg1", "Install pg2", "Install pg3"]
    assert rows[0].new == ("`Patroni 4.1.5 in /opt/patroni, from the wheelhouse uploaded to "
                           "~pgha/pgha-wheelhouse/wheelhouse "
                           "(steps: wheelhouse, patroni, distro, unit, cleanup)`")


def test_add_replica() -> None:
    plan = plan_of("add-replica")
    assert plan.lines == (
        "etcd: unchanged (3 members, quorum 2, tolerates 1 failure)",
        "Patroni 4.1.5 installed (wheelhouse) on pg5",
        "pg_hba reloaded on pg1, pg2, pg3 (admits pg5)",
        "Patroni: pg5 starts once the leader's pg_hba admits it, clones from the leader (pg1, as of the last "
        "up/refresh) and streams",
        "HAProxy on pg4 reloads after `haproxy -c` (pg5 joins the primary and replica backends)",
    )
    assert plan.concerns == ()
    assert plan.expect == "Expect no write interruption."
    rows = table_rows(load("add-replica"))
    assert Row("create", "PatroniNode pg5", "", "",
               "`PostgreSQL 10.77.0.15:5432, data /var/lib/postgresql/15/pgha-lab`") in rows
    assert Row("update", "PatroniNode pg1", '`pg_hba["20 replication pg5"]`', "",
               "`host replication replicator 10.77.0.15/32 scram-sha-256`") in rows
    assert Row("update", "HAProxyConfig pg4", "`replica_servers.pg5`", "",
               "`10.77.0.15:5432 maxconn 150 check port 8008`") in rows
    assert "**6 to create · 5 to update · 28 unchanged**" in comment("add-replica")


def test_a_replica_from_backup() -> None:
    """With pgha:backup the node's inputs carry a pgBackRest replica method (field added here)."""
    preview = load("add-replica")
    node = next(s for s in preview.steps if s.urn.endswith("node-pg5"))
    command = "/usr/bin/pgbackrest --stanza=pgha-lab restore"
    preview = edit_step(preview, "node-pg5", new_inputs={**(node.new_inputs or {}),
                                                         "replica_from_backup": command})
    assert ("Patroni: pg5 starts once the leader's pg_hba admits it, clones from the latest backup "
            "(pgBackRest, then archived WAL; the leader (pg1, as of the last up/refresh) if none) and "
            "streams") in build_plan(preview).lines


def test_a_resource_type_the_summary_does_not_know_still_shows() -> None:
    """A newer pgha's resource (a connection pooler, say) is listed by name, never dropped."""
    preview = load("add-replica")
    extra = Step(op="create", urn="urn:pulumi:lab::pgha::pgha:index:PostgresHaCluster$pulumi-python:dynamic/"
                                  "pgha:PgBouncer::pgha-lab-pooler", kind="PgBouncer",
                 name="pgha-lab-pooler", type="pulumi-python:dynamic/pgha:PgBouncer",
                 new_inputs={"scope": "pgha-lab", "pool_mode": "transaction"})
    preview = dataclasses.replace(preview, steps=(*preview.steps, extra))
    assert ("PgBouncer pooler: create (no plan wording for this resource type: read its rows below)"
            in build_plan(preview).lines)
    assert Row("create", "PgBouncer pooler", "", "", "`pool_mode=transaction`") in table_rows(preview)


def test_first_change_after_an_upgrade_reads_like_any_other() -> None:
    """Stored inputs of the previous pgha (pg_hba list, one HAProxy `servers` list, nested dcs):
    the engine's detailed diff shows whole inputs replaced, the summary only what changes."""
    preview = load("upgrade-add-replica")
    haproxy = next(s for s in preview.steps if s.kind == "HAProxyConfig")
    assert set(haproxy.detailed_diff) == {"maxconn", "primary_servers", "replica_servers", "servers"}
    assert plan_of("upgrade-add-replica").lines == plan_of("add-replica").lines
    rows = [r for r in table_rows(preview) if r.resource in ("PatroniNode pg1", "HAProxyConfig pg4")]
    assert [(r.prop, r.old, r.new) for r in rows] == [
        ("`pg_hba[]`", "", "`host replication replicator 10.77.0.15/32 scram-sha-256`"),
        ("`pg_hba[]`", "", "`host all rewind_user 10.77.0.15/32 scram-sha-256`"),
        ("`primary_servers.pg5`", "", "`10.77.0.15:5432 maxconn 150 check port 8008`"),
        ("`replica_servers.pg5`", "", "`10.77.0.15:5432 maxconn 150 check port 8008`"),
    ]


def test_remove_replica() -> None:
    plan = plan_of("remove-replica")
    assert plan.lines == (
        "etcd: unchanged (3 members, quorum 2, tolerates 1 failure)",
        "pg_hba reloaded on pg1, pg2 (drops pg3)",
        "HAProxy on pg4 reloads after `haproxy -c` (pg3 leaves the primary and replica backends)",
        "Patroni: pg3 (a replica) stops and leaves the cluster; its Patroni unit and virtualenv are removed; "
        "its data directory /var/lib/postgresql/15/pgha-lab is kept",
    )
    assert plan.concerns == ()
    assert plan.expect == ("Expect no write interruption; sessions on a replica that restarts or leaves "
                           "(replica port) are cut and reconnect.")


def test_remove_a_replicas_host_shrinks_etcd() -> None:
    plan = plan_of("remove-replica-host")
    assert plan.lines[0] == "etcd: pg3 leaves last, once nothing else needs it (below)"
    assert plan.lines[-1] == ("etcd: pg3 removed through the v3 API and stopped (its data directory set "
                              "aside as <dir>.removed-<time>): 3 → 2 members, quorum 2 → 2, tolerates 1 → 0 "
                              "failures")
    assert concerns(plan) == {"etcd membership": [
        "3 → 2 members: quorum 2 → 2, tolerates 1 → 0 failures; an even count: 2 members tolerate no more "
        "failures than 1; fault tolerance drops from 1 to 0; losing any one etcd member then stops the DCS, "
        "and Patroni demotes the leader."]}
    assert "Switchover" not in concerns(plan)


def test_remove_the_leaders_host_switches_over_first() -> None:
    plan = plan_of("remove-leader-host")
    assert plan.lines == (
        "etcd: pg1 leaves last, once nothing else needs it (below)",
        "Patroni: pg1 leads (as of the last up/refresh) and is removed: switchover pg1 → the replica with "
        "the least lag (pg2 or pg3) first",
        "pg_hba reloaded on pg2, pg3 (drops pg1)",
        "patroni.yml lists the new etcd endpoints, reloaded on pg2, pg3",
        "HAProxy on pg4 reloads after `haproxy -c` (pg1 leaves the primary and replica backends)",
        "Patroni: pg1 (no longer the leader) stops and leaves the cluster; its Patroni unit and virtualenv "
        "are removed; its data directory /var/lib/postgresql/15/pgha-lab is kept",
        "etcd: pg1 removed through the v3 API and stopped (its data directory set aside as "
        "<dir>.removed-<time>): 3 → 2 members, quorum 2 → 2, tolerates 1 → 0 failures",
    )
    assert concerns(plan)["Switchover"] == [
        "pg1 → the replica with the least lag (pg2 or pg3): the leader's host pg1 is removed."]
    assert plan.expect.startswith("Expect one write interruption of about one switchover;")


def test_the_recorded_current_leader_wins_over_node_roles() -> None:
    """PatroniLeader's `current_leader` (set by a refresh, here pg2) is newer than the nodes' roles."""
    preview = load("remove-leader-host")
    leader = next(s for s in preview.steps if s.kind == "PatroniLeader")
    outputs = {**(leader.old_outputs or {}), "current_leader": "pg2"}
    preview = edit_step(preview, "-leader", old_outputs=outputs)
    plan = build_plan(preview)
    assert "Switchover" not in concerns(plan)
    assert not any("switchover" in line for line in plan.lines)
    assert ("Patroni: pg1 (a replica) stops and leaves the cluster; its Patroni unit and virtualenv are "
            "removed; its data directory /var/lib/postgresql/15/pgha-lab is kept") in plan.lines
    assert plan.expect.startswith("Expect no write interruption")


def test_an_unknown_leader_is_said_so() -> None:
    """Without `role` outputs (never refreshed) and no `current_leader`, the removal is conditional."""
    preview = load("remove-leader-host")
    steps = tuple(dataclasses.replace(s, old_outputs={}) if s.kind in ("PatroniNode", "PatroniLeader") else s
                  for s in preview.steps)
    plan = build_plan(dataclasses.replace(preview, steps=steps))
    assert ("Patroni: if pg1 leads when `up` runs, it first switches over to the replica with the least lag "
            "(pg2 or pg3)") in plan.lines
    assert "Leader unknown" in concerns(plan)
    assert plan.expect.startswith("Expect one write interruption if a removed host leads when `up` runs;")


def test_add_an_etcd_member_to_an_even_count() -> None:
    plan = plan_of("add-etcd-member")
    assert plan.lines == (
        "etcd: pg5 joins (member add as a learner → start → promote): 3 → 4 members, quorum 2 → 3, tolerates "
        "1 → 1 failure",
        "patroni.yml lists the new etcd endpoints, reloaded on pg1, pg2, pg3",
    )
    assert concerns(plan) == {"etcd membership": [
        "3 → 4 members: quorum 2 → 3, tolerates 1 → 1 failure; an even count: 4 members tolerate no more "
        "failures than 3."]}


def test_remove_an_etcd_member() -> None:
    plan = plan_of("remove-etcd-member")
    assert plan.lines == (
        "etcd: pg3 leaves last, once nothing else needs it (below)",
        # What the changed install script now does, from its new comment lines.
        "install steps run again on pg3: not an etcd member: the etcd of the distro is stopped and disabled",
        "patroni.yml lists the new etcd endpoints, reloaded on pg1, pg2, pg3",
        "etcd: pg3 removed through the v3 API and stopped (its data directory set aside as "
        "<dir>.removed-<time>): 3 → 2 members, quorum 2 → 2, tolerates 1 → 0 failures",
    )
    assert "fault tolerance drops from 1 to 0" in concerns(plan)["etcd membership"][0]
    assert plan.expect == "Expect no write interruption."


def test_tags() -> None:
    plan = plan_of("tags")
    assert plan.lines[1:] == (
        "pg3: tag nofailover false → true, patroni.yml reloaded; pg3 can no longer become leader",
        "pg3: tag noloadbalance false → true, patroni.yml reloaded; pg3 leaves HAProxy's replica backend "
        "(Patroni's /replica answers 503)",
    )
    assert table_rows(load("tags")) == [
        Row("update", "PatroniNode pg3", "`tags.nofailover`", "`false`", "`true`"),
        Row("update", "PatroniNode pg3", "`tags.noloadbalance`", "`false`", "`true`"),
    ]


def test_reload_only_parameter() -> None:
    plan = plan_of("param-reload")
    assert plan.lines[1:] == ("Patroni dynamic configuration, one PATCH /config: work_mem unset → 8MB "
                              "(reload, no restart); every member applies it within loop_wait",)
    assert plan.concerns == ()
    assert plan.expect == "Expect no write interruption."


def test_restart_only_parameter_rolls_with_one_switchover() -> None:
    plan = plan_of("param-restart")
    assert plan.lines[1:] == (
        "Patroni dynamic configuration, one PATCH /config: shared_buffers 128MB → 256MB (needs a restart); "
        "every member applies it within loop_wait",
        "shared_buffers needs a restart: pg2, pg3 restart one at a time, switchover pg1 → the replica with "
        "the least lag (pg2 or pg3), pg1 restarts (if its demotion did not already apply it)",
    )
    assert concerns(plan) == {
        "Switchover": ["pg1 → the replica with the least lag (pg2 or pg3): rolling restart for "
                       "shared_buffers."],
        "Restart": ["shared_buffers: every node restarts (pg1, pg2, pg3), replicas first, the leader after "
                    "one switchover."],
    }
    assert table_rows(load("param-restart")) == [
        Row("update", "PatroniDynamicConfig", "`parameters_restart.shared_buffers`", "`128MB`", "`256MB`")]


def test_rolling_restart_successor_follows_tags_and_synchronous_mode() -> None:
    """pg2 tagged nofailover leaves pg3 as the only candidate; in synchronous mode only the
    synchronous standby may take over, which a preview cannot name."""
    preview = load("param-restart")
    node = next(s for s in preview.steps if s.urn.endswith("node-pg2"))
    tagged = edit_step(preview, "node-pg2", new_inputs={**(node.new_inputs or {}),
                                                        "tags": {**node.inputs["tags"], "nofailover": True}})
    assert "switchover pg1 → pg3" in build_plan(tagged).lines[2]
    config = next(s for s in preview.steps if s.kind == "PatroniDynamicConfig")
    sync_inputs = {**(config.new_inputs or {}), "dcs": {**config.inputs["dcs"], "synchronous_mode": True}}
    plan = build_plan(edit_step(preview, "-dynamic-config", new_inputs=sync_inputs))
    assert "switchover pg1 → the synchronous standby (pg2 or pg3)" in " ".join(plan.lines)
    assert "Synchronous mode" in concerns(plan)


def test_restart_policy_manual_leaves_nodes_pending() -> None:
    plan = plan_of("param-restart-manual")
    assert plan.lines[2:] == (
        "restartPolicy rolling → manual",
        "shared_buffers needs a restart: restartPolicy manual leaves pg1, pg2, pg3 pending_restart (restart "
        "the replicas one at a time, switch over, then the former leader, yourself)",
    )
    assert "Switchover" not in concerns(plan)
    assert plan.expect == "Expect no write interruption."


def test_leader() -> None:
    plan = plan_of("leader")
    assert plan.lines[1:] == ("pgha:leader: planned switchover pg1 → pg2 (after checking that pg2 may take "
                              "over)",)
    assert concerns(plan) == {"Switchover": ["pg1 → pg2: pgha:leader unset → pg2."]}
    assert plan.expect == "Expect one write interruption of about one switchover."


def test_roles() -> None:
    assert plan_of("role-add").lines[1:] == (
        "a password is generated for role app (kept encrypted in the state)",
        "role app created on the leader (CREATEDB LOGIN) with its password (SCRAM verifier)",
    )
    alter = plan_of("role-alter")
    assert alter.lines[1:] == ("role admin altered on the leader (CREATEDB removed)",)
    assert table_rows(load("role-alter")) == [
        Row("update", "DatabaseRole admin", "`options[]`", "`CREATEDB`", "")]
    drop = plan_of("role-drop")
    assert drop.lines[1:] == ("role admin dropped on the leader",
                              "the generated role admin password is dropped from the state")
    assert concerns(drop) == {"Role dropped": ["DROP ROLE admin fails while the role owns objects or holds "
                                               "privileges."]}


def test_haproxy_check_settings() -> None:
    plan = plan_of("haproxy-checks")
    assert plan.lines[1:] == (
        "HAProxy on pg4 reloads after `haproxy -c` (checks fall 2 → 3, inter 1000 → 2000 ms; a failed "
        "server is marked down within inter + (fall − 1) × fastinter = 1.5 s → 3 s)",)
    assert concerns(plan) == {"Failover time": ["HAProxy on pg4 follows a switchover or a failure more "
                                                "slowly (down within 1.5 s → 3 s): writes pause that much "
                                                "longer."]}


def test_a_changed_secret_shows_as_changed_never_its_value() -> None:
    plan = plan_of("secret-change")
    assert "patroni.yml rewritten with a changed secret and Patroni reloaded on pg1, pg2, pg3" in plan.lines
    assert concerns(plan)["Secret"][0].startswith(
        "a secret input changed on PatroniCluster, PatroniNode pg1, PatroniNode pg2, PatroniNode pg3, "
        "PatroniDynamicConfig, PatroniLeader (values hidden).")
    rows = [r for r in table_rows(load("secret-change")) if r.prop == "`secrets`"]
    assert len(rows) == 6
    assert {(r.old, r.new) for r in rows} == {("*secret*", "*changed (value hidden)*")}


def test_a_serialised_secret_envelope_is_never_shown() -> None:
    """`stack export` form of a secret: shown as [secret], its change as 'changed'."""
    envelope = {SECRET_SIG_KEY: SECRET_SIG, "ciphertext": "v1:abc:def"}
    assert text(envelope) == "[secret]"
    found = diff_inputs("DatabaseRole", {"name": "app", "secrets": "plain-old"},
                        {"name": "app", "secrets": envelope})
    assert [(c.path, c.secret) for c in found.changes] == [("secrets", True)]
    step = Step(op="update", urn="u::p::pulumi-python:dynamic/pgha:DatabaseRole::x-role-app",
                kind="DatabaseRole", name="x-role-app",
                old_inputs={"name": "app", "secrets": "[secret]", "scope": "x"},
                new_inputs={"name": "app", "secrets": envelope, "scope": "x"})
    rendered = render(Preview(steps=(step,)), build_plan(Preview(steps=(step,))), "t")
    assert "v1:abc:def" not in rendered and "plain-old" not in rendered


def test_replaced_node() -> None:
    plan = plan_of("replace-node")
    assert plan.lines == (
        "etcd: pg3 is replaced (address changes): removed through the v3 API, then added again as a learner "
        "and promoted",
        "the install steps run again on pg3: its address or host key changed (each step checks what is there "
        "first)",
        "pg_hba reloaded on pg1, pg2 (pg3's lines change)",
        "patroni.yml lists the new etcd endpoints, reloaded on pg1, pg2",
        "Patroni: pg3 is replaced (address changes): it stops and leaves; its data directory "
        "/var/lib/postgresql/15/pgha-lab is kept; then it starts at the new address and clones from the "
        "leader (pg1, as of the last up/refresh)",
        "HAProxy on pg4 reloads after `haproxy -c` (the server line of pg3 changes in the primary and "
        "replica backends)",
    )
    assert concerns(plan)["Replaced"] == [
        "etcd member pg3 is deleted and created again (address); quorum counts one member fewer meanwhile.",
        "PatroniNode pg3 is deleted and created again (address): a full base backup.",
    ]
    assert Row("replace", "PatroniNode pg3", "`address (forces replace)`", "`10.77.0.13`",
               "`10.77.0.23`") in table_rows(load("replace-node"))


def test_keep_data_on_destroy() -> None:
    plan = plan_of("keep-data-false")
    assert plan.lines[1:] == ("keepDataOnDestroy true → false recorded for pg1, pg2, pg3 (applies when a "
                              "node is removed; nothing changes on the hosts)",)
    assert concerns(plan) == {"Data removal": ["keepDataOnDestroy becomes false on pg1, pg2, pg3: a later "
                                               "removal or destroy deletes the data directory."]}


def test_a_node_removed_with_keep_data_false_stored_loses_its_data() -> None:
    """A delete acts on the STORED inputs: here pg3's state says keep_data_on_destroy: false."""
    preview = load("remove-replica")
    node = next(s for s in preview.steps if s.urn.endswith("node-pg3"))
    stored = {**(node.old_inputs or {}), "keep_data_on_destroy": False}
    preview = edit_step(preview, "node-pg3", old_inputs=stored)
    plan = build_plan(preview)
    assert ("Patroni: pg3 (a replica) stops and leaves the cluster; its Patroni unit and virtualenv are "
            "removed; its data directory /var/lib/postgresql/15/pgha-lab is DELETED (keepDataOnDestroy: "
            "false)") in plan.lines
    assert concerns(plan)["Data removal"] == [
        "/var/lib/postgresql/15/pgha-lab is deleted on pg3 (keepDataOnDestroy: false)."]


def test_patroni_version() -> None:
    plan = plan_of("patroni-version")
    assert plan.lines[1:] == ("Patroni 4.1.5 → 4.1.6 reinstalled into /opt/patroni on pg1, pg2, pg3 (not "
                              "restarted)",)
    assert list(concerns(plan)) == ["Patroni upgrade"]


def test_a_new_install_script_for_the_same_version_says_no_reinstall() -> None:
    """pgha's own script changes (an upgrade of pgha): the steps run again, the new comment lines
    say what changed, and the version already there is not reinstalled."""
    preview = load("patroni-version")
    for host in ("pg1", "pg2", "pg3"):
        step = next(s for s in preview.steps if s.urn.endswith(f"install-{host}-patroni"))
        old = step.old_inputs["create"].replace("4.1.5", "4.1.6")
        new = old.replace("  # a fresh virtualenv", "  # with uv when the wheelhouse carries its wheel\n"
                                                  "  # a fresh virtualenv")
        preview = edit_step(preview, f"install-{host}-patroni", old_inputs={**step.old_inputs, "create": old},
                            new_inputs={**step.new_inputs, "create": new})
    plan = build_plan(preview)
    assert plan.lines[1:] == ("install steps run again on pg1, pg2, pg3 (each checks for Patroni 4.1.6 "
                              "first: no reinstall when it is there): with uv when the wheelhouse carries "
                              "its wheel",)
    assert "Patroni upgrade" not in concerns(plan)


def test_destroy() -> None:
    plan = plan_of("destroy")
    assert plan.destroy
    assert plan.lines == (
        "HAProxy on pg4 stops; the distro's original haproxy.cfg is restored",
        "role admin dropped on the leader",
        "Patroni: pg2, pg3 stop, then pg1 (the leader, as of the last up/refresh) stops last, without a "
        "switchover (every member leaves); units and virtualenvs removed",
        "PostgreSQL data: data directory /var/lib/postgresql/15/pgha-lab is kept",
        "the cluster's keys are removed from etcd (what `patronictl remove` does)",
        "etcd: pg1, pg2, pg3 leave and stop (data directories set aside as <dir>.removed-<time>)",
    )
    assert list(concerns(plan)) == ["Destroy"]
    assert plan.expect == "Expect the cluster to go away: writes and reads stop for good."
    assert "### Plan (`pulumi destroy` order)" in comment("destroy")


def test_add_two_hosts_and_remove_the_leaders_host_in_one_edit() -> None:
    plan = plan_of("combo-add-two-remove-leader")
    assert plan.lines == (
        "etcd: pg5, pg6 join one at a time (member add as a learner → start → promote): 3 → 5 members, "
        "quorum 2 → 3, tolerates 1 → 2 failures",
        "Patroni: pg1 leads (as of the last up/refresh) and is removed: switchover pg1 → the replica with "
        "the least lag (pg2 or pg3) first",
        "Patroni 4.1.5 installed (wheelhouse) on pg5, pg6",
        "pg_hba reloaded on pg2, pg3 (admits pg5, pg6, drops pg1)",
        "patroni.yml lists the new etcd endpoints, reloaded on pg2, pg3",
        "Patroni: pg5, pg6 start once the leader's pg_hba admits them, clone from the leader and stream",
        "HAProxy on pg4 reloads after `haproxy -c` (pg1 leaves the primary and replica backends; pg5 and pg6 "
        "join the primary and replica backends)",
        "Patroni: pg1 (no longer the leader) stops and leaves the cluster; its Patroni unit and virtualenv "
        "are removed; its data directory /var/lib/postgresql/15/pgha-lab is kept",
        "etcd: pg1 removed through the v3 API and stopped (its data directory set aside as "
        "<dir>.removed-<time>): 5 → 4 members, quorum 3 → 3, tolerates 2 → 1 failure",
    )
    assert concerns(plan)["etcd membership"] == [
        "3 → 5 → 4 members: quorum 2 → 3, tolerates 1 → 1 failure; an even count: 4 members tolerate no more "
        "failures than 3; while `up` runs the cluster has 5 members (joins first, removals last)."]
    assert len(concerns(plan)["Switchover"]) == 1


def test_add_a_replica_with_a_restart_and_a_preferred_leader() -> None:
    """The rolling restart hands over to pgha:leader, so setting it costs no second switchover."""
    plan = plan_of("combo-add-restart-leader")
    assert plan.lines[-2:] == (
        "max_connections needs a restart: pg2, pg3, pg5 restart one at a time, switchover pg1 → pg3, pg1 "
        "restarts (if its demotion did not already apply it)",
        "pgha:leader unset → pg3: pg3 leads at this point: no switchover",
    )
    assert len(concerns(plan)["Switchover"]) == 1
    assert plan.expect.startswith("Expect one write interruption of about one switchover;")


def test_without_show_sames_the_view_is_partial() -> None:
    preview = load("add-replica")
    partial = dataclasses.replace(preview, steps=tuple(s for s in preview.steps if s.op != SAME))
    plan = build_plan(partial)
    assert "Partial view" in concerns(plan)
    assert plan.lines[0] == "etcd: unchanged"


# --- failed previews, Markdown and the command ------------------------------------------------


@pytest.mark.parametrize(("name", "error"), [
    ("invalid-config", "pgha:restartPolicy: 'sometimes' is not one of rolling, manual"),
    ("etcd-majority-removal", "removing 2 of 3 etcd members at once (pg2, pg3) would leave the cluster "
                              "without quorum"),
])
def test_a_failed_preview_says_so_and_shows_the_error(tmp_path: Path, name: str, error: str) -> None:
    out = tmp_path / "review.md"
    status = main([str(FIXTURES / f"{name}.json"), "--stack", "staging", "--failed",
                   str(FIXTURES / f"{name}.diff"), "--output", str(out)])
    text_ = out.read_text()
    assert status == 1
    assert text_.startswith("<!-- pgha-review:staging -->\n"
                            "## pgha preview: `staging` — ❌ the preview failed")
    head = text_.split("<details>", 1)[0]
    assert error in head
    assert "KeyboardInterrupt" not in head  # the language host's noise stays folded


def test_policy_findings_come_from_the_diff_text() -> None:
    """The JSON digest drops policy events: an advisory finding is read from `--diff` output,
    a mandatory one fails the preview and leads the failure comment."""
    out = comment("policy-advisory", with_diff=True)
    warnings = out.split("### Warnings", 1)[1].split("###", 1)[0]
    assert ("- 🛡️ **Policy etcd-odd-members** (advisory): pgha:hosts: 4 hosts have the etcd role (pg1, pg2, "
            "pg3, pg5);") in warnings
    assert "**etcd membership**: 3 → 4 members" in warnings
    status = main([str(FIXTURES / "policy-mandatory.json"), "--stack", "prod", "--failed",
                   str(FIXTURES / "policy-mandatory.diff")])
    assert status == 1


def test_a_mandatory_policy_leads_the_failure_comment(capsys: pytest.CaptureFixture[str]) -> None:
    main([str(FIXTURES / "policy-mandatory.json"), "--stack", "prod", "--failed",
          str(FIXTURES / "policy-mandatory.diff")])
    head = capsys.readouterr().out.split("<details>", 1)[0]
    first = head.index("**Policy client-cidrs-not-open** (mandatory): pgha:clientCidrs (or pgha:pgHba) "
                       "admits every address")
    assert first < head.index("**Policy etcd-odd-members** (advisory)") < head.index("error: preview failed")


def test_the_command_reads_stdin_and_writes_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO((FIXTURES / "leader.json").read_text()))
    assert main(["-", "--stack", "prod"]) == 0
    assert capsys.readouterr().out.startswith("<!-- pgha-review:prod -->")
    assert main([str(tmp_path / "missing.json")]) == 2
    (tmp_path / "bad.json").write_text("not json")
    assert main([str(tmp_path / "bad.json")]) == 2


def test_markdown_cells_and_the_size_cap() -> None:
    assert code("a | b") == "`a \\| b`"
    assert code("x `y`") == "`` x `y` ``"
    huge = "~ line\n" * 20000
    out = render(load("add-replica"), plan_of("add-replica"), "lab", huge)
    assert len(out) <= MAX_COMMENT + 200
    assert "characters are cut: `make review STACK=<stack>` writes all of it" in out
    assert out.rstrip().endswith("</details>")


def test_quorum_arithmetic() -> None:
    assert [(quorum(n), tolerated(n)) for n in (1, 2, 3, 4, 5)] == [(1, 0), (2, 0), (2, 1), (3, 1), (3, 2)]
    assert etcd_shape(3, 3) == "3 members, quorum 2, tolerates 1 failure"
    assert etcd_shape(5, 4) == "5 → 4 members, quorum 3 → 3, tolerates 2 → 1 failure"


def test_fixture_json_is_the_cli_digest() -> None:
    """The recorded files keep the digest's shape: steps with op/urn/oldState/newState."""
    doc = json.loads((FIXTURES / "add-replica.json").read_text())
    assert {"config", "steps", "changeSummary"} <= set(doc)
    step = next(s for s in doc["steps"] if s["op"] == "update")
    assert {"op", "urn", "oldState", "newState", "diffReasons", "detailedDiff"} <= set(step)


# --- scripts/review-stack end to end ------------------------------------------------------------


@pytest.mark.engine
def test_review_stack_end_to_end(tmp_path: Path, pulumi_bin: Path) -> None:
    """The script in a copy of the project, on a new stack of a private backend (no host needed)."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("Pulumi.yaml", "__main__.py"):
        shutil.copy(ROOT / name, project / name)
    for name in ("components", "templates", "review"):
        shutil.copytree(ROOT / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    (project / "scripts").mkdir()
    for name in ("env.sh", "review-stack"):
        shutil.copy(ROOT / "scripts" / name, project / "scripts" / name)
    (project / "stacks").mkdir()
    shutil.copy(ROOT / "lab" / "stack.yaml", project / "stacks" / "Pulumi.lab.yaml")
    for link in (".venv", ".tools"):
        (project / link).symlink_to(ROOT / link)
    # The review path runs the policy pack too, as CI does.
    subprocess.run([str(ROOT / "scripts" / "setup-policy-venv")], check=True, capture_output=True)
    shutil.copytree(ROOT / "policy", project / "policy",
                    ignore=shutil.ignore_patterns("__pycache__", ".venv"))
    (project / "policy" / ".venv").symlink_to(ROOT / "policy" / ".venv")
    cli = PulumiCli(project, tmp_path / "state", passphrase="pgha-lab-only")
    cli.run("stack", "init", "lab")
    env = {**cli.env, "PGHA_REVIEW_DIR": str(tmp_path / "out")}
    env.pop("PGHA_ROOT", None)
    ok = subprocess.run([str(project / "scripts" / "review-stack"), "lab"], env=env, text=True,
                        capture_output=True, timeout=600)
    assert ok.returncode == 0, ok.stderr
    text_ = (tmp_path / "out" / "review-lab.md").read_text()
    assert text_.startswith("<!-- pgha-review:lab -->")
    assert "etcd: pg1, pg2, pg3 found a new cluster together" in text_
    # The lab stack has TLS on: the hosts' certificate files are one plan line, not one per resource.
    assert ("TLS: certificate files written before the service starts (keys 0600 of its user): etcd on "
            "pg1, pg2, pg3; haproxy on pg4; patroni on pg1, pg2, pg3") in text_, text_
    assert "no plan wording" not in text_
    assert "<details><summary>pulumi preview --diff</summary>" in text_
    assert "pgha|local|policy" in (tmp_path / "out" / "preview-lab.diff").read_text()  # the pack ran
    failed = subprocess.run([str(project / "scripts" / "review-stack"), "nosuch"], env=env, text=True,
                            capture_output=True, timeout=600)
    assert failed.returncode != 0
    assert "❌ the preview failed" in (tmp_path / "out" / "review-nosuch.md").read_text()
    assert os.access(ROOT / "scripts" / "review-stack", os.X_OK)


def test_drift_found_by_a_refresh_is_repaired() -> None:
    """A refresh recorded drift (the outputs differ from what `up` maintains) while no input
    changed: the provider reports an update. Here pg2's Patroni was found stopped, pg4's
    haproxy.cfg edited and pg2 leading although pgha:leader says pg1 (fields edited)."""
    preview = load("no-change")
    node = next(s for s in preview.steps if s.urn.endswith("node-pg2"))
    haproxy = next(s for s in preview.steps if s.kind == "HAProxyConfig")
    leader = next(s for s in preview.steps if s.kind == "PatroniLeader")
    preview = edit_step(preview, "node-pg2", op="update", old_outputs={**(node.old_outputs or {}),
                                                                      "running": False})
    preview = edit_step(preview, "haproxy-pg4", op="update", old_outputs={**(haproxy.old_outputs or {}),
                                                                         "config_matches": False})
    preview = edit_step(preview, "-leader", op="update",
                        old_inputs={**(leader.old_inputs or {}), "leader": "pg1"},
                        new_inputs={**(leader.new_inputs or {}), "leader": "pg1"},
                        old_outputs={**(leader.old_outputs or {}), "current_leader": "pg2"})
    plan = build_plan(preview)
    assert plan.lines[1:] == (
        "pg2: Patroni was found stopped by the last refresh; `up` starts it",
        "HAProxy on pg4 reloads after `haproxy -c` (repairs drift found by the last refresh: haproxy.cfg "
        "edited or HAProxy stopped)",
        "pgha:leader: planned switchover pg2 → pg1 (after checking that pg1 may take over)",
    )
    assert concerns(plan) == {
        "Switchover": ["pg2 → pg1: pgha:leader is pg1 but pg2 led at the last refresh."]}
    rows = table_rows(preview)
    assert Row("update", "PatroniNode pg2", "`running (refresh)`", "`false`", "`true`") in rows
    assert not any(r.prop == "`secrets`" for r in rows), "drift is not a secret change"


def test_a_plaintext_cluster_moving_to_tls_reads_as_one_move() -> None:
    """pgha:tls turned on for a running plaintext cluster (recorded from test_tls_move.py): the move
    is the plan's last line, after the CA, the certificates and their files it needs, with its
    concern; the members', nodes' and HAProxy's updates, which the move leaves with nothing to do,
    get no line of their own."""
    plan = plan_of("tls-move")
    assert plan.lines[0] == "TLS: the stack makes its cluster CA (the key a secret in the state)"
    assert plan.lines[-1].startswith("TLS: the running cluster moves to TLS, with no switchover and no "
                                    "PostgreSQL restart: Patroni pauses"), plan.lines
    assert "each Patroni (pg1, pg2, pg3) restarts with TLS, the leader first" in plan.lines[-1]
    text = "\n".join(plan.lines)
    for stale in ("etcd: pg1 updated", "patroni.yml rewritten", "pg_hba reloaded", "HAProxy on pg4 reloads"):
        assert stale not in text, (stale, text)
    assert "no automatic failover while Patroni is paused" in concerns(plan)["Move to TLS"][0]


def test_a_move_to_tls_with_another_change_still_shows_that_change() -> None:
    """A pg_hba line that changes beyond host -> hostssl in the same edit keeps its line."""
    preview = load("tls-move")
    step = next(s for s in preview.steps if s.urn.endswith("pgha-lab-node-pg2"))
    wider = "hostssl all all 10.77.0.0/16 scram-sha-256"
    new = {**step.new_inputs, "pg_hba": {**step.new_inputs["pg_hba"], "50 clients 10.77.0.0/24": wider}}
    plan = build_plan(edit_step(preview, "pgha-lab-node-pg2", new_inputs=new))
    assert any(line.startswith("pg_hba reloaded on pg2") for line in plan.lines), plan.lines
