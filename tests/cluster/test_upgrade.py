"""Upgrading pgha under a deployed stack.

A stack deployed by the release before the review-shaped inputs (BASELINE: keyed pg_hba,
per-backend HAProxy servers, split parameters, one PatroniInstall per host), then `pulumi up`
with today's program: only the install moves to pulumi-command steps, nothing else is
replaced, deleted or updated, and nothing restarts. The next real change is shown leaf by
leaf and applied.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab import Lab
from scripts.lab_stack import LAB_PASSPHRASE, link_wheelhouse
from tests.cluster.baseline import baseline_tree, install_today
from tests.cluster.conftest import NODES, wait_until
from tests.conftest import ROOT, PulumiCli

pytestmark = pytest.mark.cluster

BASELINE = "c244e34"  # main before the review-shaped inputs


@dataclass
class Upgrade:
    lab: Lab
    cli: PulumiCli
    project: Path


@pytest.fixture(scope="module")
def upgrade(tmp_path_factory: pytest.TempPathFactory, pulumi_bin: Path) -> Iterator[Upgrade]:
    base = tmp_path_factory.mktemp("upgrade")
    project = base / "project"
    project.mkdir()
    baseline_tree(project, BASELINE)
    (project / ".venv").symlink_to(ROOT / ".venv")
    lab = Lab.up(4)
    cli = PulumiCli(project, base / "state", passphrase=LAB_PASSPHRASE)
    try:
        link_wheelhouse(lab)
        cli.run("stack", "init", "lab")
        cli.run("up", "--yes", "--skip-preview", "--stack", "lab")
        install_today(project)
        yield Upgrade(lab=lab, cli=cli, project=project)
        cli.run("destroy", "--yes", "--skip-preview", "--stack", "lab", check=False)
    finally:
        Lab.down()


def _patroni_pids(lab: Lab) -> dict[str, str]:
    """Patroni's and the postmaster's PIDs on each node: a restart changes them."""
    return {name: lab.ssh(name, "systemctl show -p MainPID --value patroni; "
                                "sudo -u postgres psql -XAtc 'SELECT pg_postmaster_start_time()'"
                    ).stdout.strip() for name in NODES}


def test_up_with_the_new_program_moves_only_the_install(upgrade: Upgrade) -> None:
    """The baseline installed Patroni with one PatroniInstall per host; today's program does it
    with pulumi-command steps. The first `up` creates those (each converges without changing
    what is right) and forgets the PatroniInstall (its delete leaves the host alone): nothing
    else changes, and no Patroni or PostgreSQL restarts."""
    raw = upgrade.cli.run("preview", "--stack", "lab", "--json").stdout
    steps = [(s["op"], s["urn"].rsplit("::", 1)[-1], s["urn"].split("::")[-2].rsplit("$", 1)[-1])
             for s in json.loads(raw)["steps"] if s["op"] != "same"]
    install_types = ("command:remote:Command", "command:remote:CopyToRemote",
                     "pulumi-python:dynamic/pgha:PatroniHostCleanup", "pgha:index:PatroniHostInstall")
    assert {op for op, _, _ in steps} == {"create", "delete"}, steps
    for op, name, type_ in steps:
        if op == "create":
            assert type_ in install_types and name.startswith("pgha-lab-install-"), (name, type_)
        else:
            assert type_ == "pulumi-python:dynamic/pgha:PatroniInstall", (name, type_)
    before = _patroni_pids(upgrade.lab)
    upgrade.cli.run("up", "--yes", "--skip-preview", "--stack", "lab")
    assert _patroni_pids(upgrade.lab) == before, "the upgrade restarted Patroni or PostgreSQL"
    for name in NODES:
        assert upgrade.lab.ssh(name, "systemctl is-active patroni").stdout.strip() == "active"
    upgrade.cli.run("preview", "--stack", "lab", "--expect-no-changes")


def test_the_next_change_reads_leaf_by_leaf(upgrade: Upgrade) -> None:
    stack_file = upgrade.project / "stacks" / "Pulumi.lab.yaml"
    text = stack_file.read_text()
    assert "shared_buffers: 128MB" in text
    stack_file.write_text(text.replace("shared_buffers: 128MB", "shared_buffers: 128MB\n      work_mem: 8MB"))
    diff = upgrade.cli.run("preview", "--diff", "--stack", "lab").stdout
    changed = [line.strip() for line in diff.splitlines() if line.lstrip().startswith(("~", "+", "-"))]
    assert changed == [
        "~ pulumi-python:dynamic/pgha:PatroniDynamicConfig: (update)",
        "~ parameters_reload: {",
        '+ work_mem: "8MB"',
        "~ 1 to update",
    ], diff
    upgrade.cli.run("up", "--yes", "--skip-preview", "--stack", "lab")
    for name, address in NODES.items():
        wait_until(lambda a=address, n=name: upgrade.lab.ssh(
            n, "sudo -u postgres psql -XAtc 'SHOW work_mem'").stdout.strip() == "8MB",
            timeout=30, what=f"work_mem on {name} ({address})")
    upgrade.cli.run("preview", "--stack", "lab", "--expect-no-changes")
