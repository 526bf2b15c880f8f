"""A running plaintext cluster moves to pgha:tls in one `up`, under a write load.

The stack is deployed with pgha:tls.enabled: false (3 etcd+Patroni nodes, HAProxy), a write load
runs through HAProxy, and TLS is turned on. The review names the move; `up` pauses Patroni,
restores etcd from one snapshot on https, restarts each Patroni with TLS (the leader first) and
ends the pause. Checked after it: 0 acknowledged writes lost, the longest write gap, the same
leader and timeline (no switchover), the same postmaster start time on every node (no PostgreSQL
restart), plaintext refused and TLS served on etcd and the REST API, the walsenders on SSL,
patronictl on every node, HAProxy's https checks, the pause over, no move key left in the DCS, and
a next preview without changes.
"""

from __future__ import annotations

import copy
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

from components.providers.haproxy_config import backend_status
from lab import Lab
from scripts.lab_stack import link_wheelhouse
from tests.cluster.conftest import NODES, PRIMARY, ProjectCopy
from tests.cluster.tls_checks import node_client_certificate, plaintext_refused
from tests.cluster.workload import WriteLoad

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1800)]


@dataclass
class PlainStack:
    lab: Lab
    project: ProjectCopy
    password: str
    config: dict[str, Any]
    base: Path


@pytest.fixture
def stack(tmp_path_factory: pytest.TempPathFactory, pulumi_bin: Path) -> Iterator[PlainStack]:
    """A plaintext cluster on fresh lab hosts, for each test (a cluster on TLS never goes back)."""
    lab = Lab.up(4)
    try:
        link_wheelhouse(lab)
        base = tmp_path_factory.mktemp("tls-move")
        project = ProjectCopy.with_stack(base, "tlsmove")
        config = copy.deepcopy(project.base_config)
        config["tls"] = {"enabled": False}
        project.write_config(config)
        project.run("up", "--yes", "--skip-preview")
        outputs = json.loads(project.run("stack", "output", "--json", "--show-secrets").stdout)
        yield PlainStack(lab, project, outputs["superuserPassword"], config, base)
        project.run("destroy", "--yes", "--skip-preview", check=False)
    finally:
        Lab.down()


def _status(address: str, ca: Path, plain: bool = False) -> dict[str, Any]:
    if plain:
        return requests.get(f"http://{address}:8008/patroni", timeout=5).json()
    return requests.get(f"https://{address}:8008/patroni", verify=str(ca), timeout=5).json()


def _plaintext_state() -> tuple[dict[str, dict[str, Any]], str]:
    before = {name: _status(address, Path(), plain=True) for name, address in NODES.items()}
    return before, next(name for name, s in before.items() if s["role"] == "primary")


def test_plaintext_cluster_moves_to_tls_under_write_load(stack: PlainStack) -> None:
    before, leader = _plaintext_state()
    load = WriteLoad(*PRIMARY, stack.password)
    load.prepare("pgha_tls_move")
    load.start()
    try:
        load.assert_progressing()
        stack.config["tls"] = {"enabled": True}
        stack.project.write_config(stack.config)
        changes = stack.project.preview_changes()
        assert "pgha-lab-etcd-tls-move" in changes.get("create", {}), changes
        review = stack.project.last_review
        Path("/tmp/pgha-tls-move-preview.json").write_text(stack.project.last_preview_json)
        assert "the running cluster moves to TLS, with no switchover and no PostgreSQL restart" in review, (
            review)
        # The move is the plan's last step (after the certificates and their files); the members',
        # nodes' and HAProxy's updates, which then find nothing to do, get no line of their own.
        assert "4. TLS: the running cluster moves to TLS" in review, review
        for stale in ("etcd: pg1 updated", "patroni.yml rewritten", "pg_hba reloaded",
                      "HAProxy on pg4 reloads"):
            assert stale not in review, (stale, review)
        t0 = time.monotonic()
        up = stack.project.run("up", "--yes", "--skip-preview")
        took = time.monotonic() - t0
        load.reset_counters()
        load.assert_progressing()
    finally:
        load.stop()
    assert load.missing() == [], "acknowledged writes lost"
    print(f"\nmove to TLS under writes: up {took:.1f}s, {len(load.acknowledged)} writes acknowledged, "
          f"longest gap {load.longest_window():.2f}s, {len(load.failures)} failed attempts")
    # The members' and nodes' own updates after the move restart nothing.
    assert "starting pg1 from its data" not in up.stdout and "restarting" not in up.stdout, up.stdout[-3000:]
    _assert_on_tls(stack, before, leader)


def _assert_on_tls(stack: PlainStack, before: dict[str, dict[str, Any]], leader: str) -> None:
    """The cluster runs on TLS, with the leader, timelines and postmasters it had before the move."""
    outputs = json.loads(stack.project.run("stack", "output", "--json", "--show-secrets").stdout)
    ca = stack.base / "ca.crt"
    ca.write_text(outputs["tlsCa"])
    after = {name: _status(address, ca) for name, address in NODES.items()}
    # No switchover and no PostgreSQL restart.
    assert after[leader]["role"] == "primary", after
    for name in NODES:
        assert after[name]["postmaster_start_time"] == before[name]["postmaster_start_time"], name
        assert after[name]["timeline"] == before[name]["timeline"], name
        assert not after[name].get("pause"), (name, "still paused")
    # Plaintext refused, TLS served (etcd asks for a client certificate: the node's).
    for address in NODES.values():
        for port in (8008, 2379):
            plaintext_refused(f"http://{address}:{port}/health")
    client = node_client_certificate(stack.lab, stack.base)
    for address in NODES.values():
        health = requests.get(f"https://{address}:2379/health", verify=str(ca), cert=client,
                              timeout=5)
        assert health.status_code == 200 and health.json().get("health") == "true", health.text
    marker = requests.post(f"https://{NODES['pg1']}:2379/v3/kv/range", verify=str(ca),
                           cert=client, timeout=5,
                           json={"key": "L3BnaGEvcGdoYS1sYWIvdGxzLW1vdmU="}).json()  # /pgha/pgha-lab/tls-move
    assert not marker.get("kvs"), marker
    host, port = PRIMARY
    with psycopg.connect(host=host, port=port, user="postgres", dbname="postgres", password=stack.password,
                         sslmode="verify-full", sslrootcert=str(ca), connect_timeout=5) as conn:
        walsenders = conn.execute(
            "SELECT s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)").fetchall()
    assert len(walsenders) == 2 and all(on for (on,) in walsenders), walsenders
    for name in NODES:
        out = stack.lab.ssh(name, "sudo -u postgres timeout 30 patronictl -c /etc/patroni/patroni.yml list",
                            check=False)
        assert out.returncode == 0 and out.stdout.count("streaming") == 2, (name, out.stdout, out.stderr)
    cfg = stack.lab.ssh("pg4", "sudo cat /etc/haproxy/haproxy.cfg").stdout
    assert "moving to TLS" not in cfg and cfg.count("check-ssl verify required") == 2, cfg
    status = backend_status("10.77.0.14", 7000)
    assert [s for s, state in status["pgha-lab_primary"].items() if state == "UP"] == [leader], status
    assert sorted(s for s, state in status["pgha-lab_replicas"].items() if state == "UP") == sorted(
        n for n in NODES if n != leader), status
    assert stack.project.preview_changes() == {}


def test_an_interrupted_move_carries_on_in_the_next_up(stack: PlainStack) -> None:
    """The `up` that moves a plaintext cluster is cancelled (SIGINT) as soon as etcd is on https,
    with Patroni still paused on its plaintext DCS client: the next `up` carries the move on, and
    the cluster ends as after an uninterrupted move (no switchover, no restart, pause over)."""
    before, leader = _plaintext_state()
    stack.config["tls"] = {"enabled": True}
    stack.project.write_config(stack.config)
    proc = subprocess.Popen(
        ["pulumi", "up", "--yes", "--skip-preview", "--non-interactive", "--stack", stack.project.stack],
        cwd=stack.project.dir, env=stack.project.cli.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    assert proc.stdout is not None
    seen: list[str] = []
    for line in proc.stdout:
        seen.append(line)
        if "etcd runs on https" in line:
            proc.send_signal(signal.SIGINT)
            break
    rest, _ = proc.communicate(timeout=900)
    out = "".join(seen) + rest
    assert proc.returncode != 0 and "etcd runs on https" in out, out[-3000:]
    stack.project.run("up", "--yes", "--skip-preview")
    _assert_on_tls(stack, before, leader)
