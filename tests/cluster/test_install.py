"""Installing Patroni with pulumi-command resources (PatroniHostInstall), on real lab hosts.

- The runbook's install: `pgha:patroni.install` `method: index` with `indexUrl` and a `proxy`
  that needs a password, against a package index and an HTTP proxy on the build machine
  (tests/cluster/package_index.py): the hosts reach the index only through the proxy, and
  the proxy's log shows what pip fetched. The proxy's password is in no command line and
  nowhere in the state in plaintext.
- A wrong proxy stops the install at its preflight, naming the host and the stack key, with
  nothing changed on that host; the next `up` with the right proxy converges.
- A changed host key (the stack's known_hosts no longer matches) stops the `up`.
- Removing a host removes what its install put there; a dead host is removed all the same.
- Upgrading a stack deployed by the program that installed with the PatroniInstall dynamic
  provider: the old resources are deleted and the new ones created while the cluster keeps
  serving writes; Patroni stays installed and is not restarted.
"""

from __future__ import annotations

import copy
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from components import install_steps as steps
from components.install_steps import InstallPlan
from lab import Lab
from scripts.lab_stack import LAB_PASSPHRASE, link_wheelhouse
from tests.cluster.baseline import baseline_tree, install_today
from tests.cluster.conftest import ProjectCopy, host, ssh_accepts, wait_until
from tests.cluster.package_index import IndexBehindProxy, free_port, index_behind_proxy
from tests.cluster.workload import WriteLoad
from tests.conftest import ROOT, PulumiCli

pytestmark = pytest.mark.cluster

# main before the host steps became pulumi-command resources (PatroniInstall, a dynamic provider)
BASELINE = "f523243"
STEPS = ("patroni", "distro", "unit")
CLEANUP = "pulumi-python:dynamic/pgha:PatroniHostCleanup"


def _ssh(lab: Lab, name: str, command: str) -> str:
    return lab.ssh(name, command, check=False).stdout.strip()


def _leader(address: str = "10.77.0.11") -> str:
    view = requests.get(f"http://{address}:8008/cluster", timeout=5).json()
    return next(m["name"] for m in view["members"] if m["role"] == "leader")


def _streaming(address: str, names: set[str]) -> bool:
    try:
        members = requests.get(f"http://{address}:8008/cluster", timeout=5).json()["members"]
    except (requests.RequestException, ValueError, KeyError):
        return False
    return {m["name"] for m in members} == names and all(
        m["role"] == "leader" or m["state"] == "streaming" for m in members)


# --- the runbook's install: a package index through an HTTP proxy ----------------------------


@dataclass
class Proxied:
    lab: Lab
    project: ProjectCopy
    served: IndexBehindProxy
    config: dict[str, Any]
    up_output: str

    def apply(self, hosts: list[dict[str, Any]], proxy: str, check: bool = True,
              **ssh: Any) -> subprocess.CompletedProcess[str]:
        """Write the stack (the proxy as a secret, as the runbook's users would), then `up`."""
        config = copy.deepcopy(self.config)
        config["hosts"] = hosts
        config["ssh"] = {**config["ssh"], **ssh}
        self.project.write_config(config)
        self.project.run("config", "set", "--secret", "--path", "pgha:patroni.install.proxy", proxy)
        return self.project.run("up", "--yes", "--skip-preview", check=check)


BASE_HOSTS = [host("pg1", ["etcd", "patroni"]), host("pg2", ["haproxy"])]


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory, pulumi_bin: Path) -> Iterator[Proxied]:
    lab = Lab.up(3)
    try:
        with index_behind_proxy(Path(lab.inv.wheelhouse)) as served:
            project = ProjectCopy.with_stack(tmp_path_factory.mktemp("install-proxy"), "lab")
            config = copy.deepcopy(project.base_config)
            config["patroni"] = {"install": {"method": "index", "version": "4.1.5",
                                             "indexUrl": served.index_url}}
            state = Proxied(lab=lab, project=project, served=served, config=config, up_output="")
            state.up_output = state.apply(BASE_HOSTS, served.proxy_url).stdout
            yield state
            project.run("destroy", "--yes", "--skip-preview", check=False)
    finally:
        Lab.down()


def test_patroni_installs_through_the_proxy(proxied: Proxied) -> None:
    seen = proxied.served.requests_seen()
    port = proxied.served.index_port
    assert f"GET http://127.0.0.1:{port}/simple/patroni/ HTTP/1.1" in seen, seen
    assert any("/packages/patroni-4.1.5-py3-none-any.whl" in line for line in seen), seen
    assert any("/packages/psycopg2_binary-" in line for line in seen), seen
    lab = proxied.lab
    probe = "/opt/patroni/bin/python -c 'import importlib.metadata as m; print(m.version(\"patroni\"))'"
    assert _ssh(lab, "pg1", probe) == "4.1.5"
    assert _ssh(lab, "pg1", "systemctl is-active patroni") == "active"
    assert _leader() == "pg1"
    # Without the proxy the index is the host's own loopback: nothing listens there.
    fetch = f"import urllib.request as u; u.urlopen(\"{proxied.served.index_url}\", timeout=5)"
    direct = lab.ssh("pg1", f"python3 -c '{fetch}'", check=False)
    assert direct.returncode != 0 and "Connection refused" in direct.stderr, direct.stderr


def test_the_proxy_password_is_in_no_command_and_not_plaintext_in_state(proxied: Proxied) -> None:
    password = proxied.served.password
    plain = proxied.project.run("stack", "export").stdout
    assert password not in plain
    assert password not in proxied.up_output
    state = json.loads(plain)
    commands = [r for r in state["deployment"]["resources"] if r["type"] == "command:remote:Command"]
    assert {r["urn"].rsplit("::", 1)[1] for r in commands} == {f"pgha-lab-install-pg1-{s}" for s in STEPS}
    for resource in commands:
        for key in ("create", "update", "delete"):
            assert password not in json.dumps(resource["inputs"].get(key)), resource["urn"]
        # connection (private key) and the install's stdin (proxy, index) are stored encrypted
        assert "ciphertext" in json.dumps(resource["inputs"]["connection"])
    patroni = next(r for r in commands if r["urn"].endswith("-patroni"))
    assert "ciphertext" in json.dumps(patroni["inputs"]["stdin"])
    assert "through the proxy http://***@10.77.0.1:" in patroni["inputs"]["create"]
    revealed = proxied.project.run("stack", "export", "--show-secrets").stdout
    assert password in revealed  # sanity: it is there, encrypted


def test_a_wrong_proxy_stops_before_the_host_changes(proxied: Proxied) -> None:
    lab = proxied.lab
    before = {
        "postgresql": _ssh(lab, "pg3", "systemctl is-active postgresql@15-main"),
        "etcd": _ssh(lab, "pg3", "systemctl is-active etcd"),
    }
    assert before == {"postgresql": "active", "etcd": "active"}
    wrong = f"http://pgha-lab:{proxied.served.password}@10.77.0.1:{free_port('10.77.0.1')}"
    hosts = [*BASE_HOSTS, host("pg3", ["patroni"])]
    started = time.monotonic()
    result = proxied.apply(hosts, wrong, check=False)
    elapsed = time.monotonic() - started
    out = result.stdout + result.stderr
    assert result.returncode != 0
    shown = wrong.replace(f"pgha-lab:{proxied.served.password}@", "***@")
    expected = (f"pg3 (10.77.0.13): pgha:patroni.install.proxy {shown} cannot fetch "
                f"{proxied.served.index_url}patroni/: <urlopen error [Errno 111] Connection refused>. "
                "Nothing was changed on this host.")
    assert expected in out, out[-4000:]
    assert proxied.served.password not in out
    print(f"\nwrong proxy: up failed after {elapsed:.1f}s with: {expected}")
    # Nothing else ran on pg3: the distro's services run on, no virtualenv, no unit.
    after = {"postgresql": _ssh(lab, "pg3", "systemctl is-active postgresql@15-main"),
             "etcd": _ssh(lab, "pg3", "systemctl is-active etcd")}
    assert after == before
    leftovers = "test -e /opt/patroni || test -e /etc/systemd/system/patroni.service; echo $?"
    assert _ssh(lab, "pg3", leftovers) == "1"
    # pg1 needed nothing from the index: its install re-ran (new stdin) without the preflight.
    assert _ssh(lab, "pg1", "systemctl is-active patroni") == "active"

    # The right proxy: the next `up` converges, and pg3 joins through the proxy.
    proxied.apply(hosts, proxied.served.proxy_url)
    wait_until(lambda: _streaming("10.77.0.11", {"pg1", "pg3"}), timeout=90, what="pg3 streaming")
    assert _ssh(lab, "pg3", "systemctl is-active postgresql@15-main") == "inactive"
    assert _ssh(lab, "pg3", "systemctl is-enabled postgresql@15-main") == "masked"
    assert _ssh(lab, "pg3", "systemctl is-active etcd") == "inactive"  # not an etcd member
    assert "disabled" in _ssh(lab, "pg3", "cat /etc/postgresql/15/main/start.conf")
    proxied.project.run("preview", "--expect-no-changes")


def test_a_changed_host_key_stops_the_up(proxied: Proxied, tmp_path: Path) -> None:
    lab = proxied.lab
    known = Path(lab.inv.known_hosts).read_text().splitlines()
    keys = {line.split()[0].split(",")[1]: line.split(None, 1)[1] for line in known if line.strip()}
    forged = [f"{line.split()[0]} {keys['pg1']}" if line.startswith("10.77.0.13,") else line
              for line in known]
    forged_file = tmp_path / "known_hosts"
    forged_file.write_text("\n".join(forged) + "\n")
    hosts = [*BASE_HOSTS, host("pg3", ["patroni"])]
    pid = _ssh(lab, "pg3", "systemctl show -p MainPID --value patroni")
    config = copy.deepcopy(proxied.config)
    config["hosts"] = hosts
    config["ssh"] = {**config["ssh"], "knownHostsFile": str(forged_file)}
    proxied.project.write_config(config)
    proxied.project.run("config", "set", "--secret", "--path", "pgha:patroni.install.proxy",
                        proxied.served.proxy_url)
    steps = proxied.project.preview_changes()
    for step in STEPS:
        assert steps["update"][f"pgha-lab-install-pg3-{step}"] == ["connection"], steps
    # pg1's key did not change: its steps stay (its cleanup stores the new known_hosts path).
    assert [n for n in steps["update"] if n.startswith("pgha-lab-install-pg1-")] == [
        "pgha-lab-install-pg1-cleanup"], steps
    started = time.monotonic()
    result = proxied.project.run("up", "--yes", "--skip-preview", check=False)
    elapsed = time.monotonic() - started
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "pgha-lab-install-pg3-" in out and "host key mismatch" in out, out[-4000:]
    print(f"\nchanged host key: up failed after {elapsed:.1f}s")
    assert _ssh(lab, "pg3", "systemctl show -p MainPID --value patroni") == pid
    # The real key again: nothing left to do.
    proxied.apply(hosts, proxied.served.proxy_url)
    proxied.project.run("preview", "--expect-no-changes")


def test_removing_a_host_cleans_up_after_its_install(proxied: Proxied) -> None:
    lab = proxied.lab
    proxied.apply(BASE_HOSTS, proxied.served.proxy_url)
    gone = ("test -e /opt/patroni || test -e /etc/systemd/system/patroni.service || "
            "test -e /usr/local/bin/patronictl || test -e /var/cache/pgha; echo $?")
    assert _ssh(lab, "pg3", gone) == "1"
    assert _ssh(lab, "pg3", "systemctl is-enabled postgresql@15-main") != "masked"
    assert "disabled" in _ssh(lab, "pg3", "cat /etc/postgresql/15/main/start.conf")  # data kept, not started


def test_a_dead_host_can_be_removed(proxied: Proxied) -> None:
    """The steps have no `delete` (pulumi-command fails one on a host that does not answer):
    only the cleanup connects, and it skips a dead host."""
    hosts = [*BASE_HOSTS, host("pg3", ["patroni"])]
    proxied.apply(hosts, proxied.served.proxy_url)
    wait_until(lambda: _streaming("10.77.0.11", {"pg1", "pg3"}), timeout=90, what="pg3 streaming")
    proxied.lab.crash("pg3")
    started = time.monotonic()
    proxied.apply(BASE_HOSTS, proxied.served.proxy_url)
    print(f"\ndead host removed in {time.monotonic() - started:.1f}s")
    state = json.loads(proxied.project.run("stack", "export").stdout)
    assert not [r for r in state["deployment"]["resources"] if "-pg3" in r["urn"]]
    proxied.project.run("preview", "--expect-no-changes")


# --- upgrading a stack deployed with the PatroniInstall dynamic provider ---------------------


def test_a_wheelhouse_without_uv_installs_with_pip(proxied: Proxied) -> None:
    """The `-patroni` step's other branch, run as the step runs it, on pg2 (HAProxy only here):
    a wheelhouse without uv's wheel installs the same Patroni with pip."""
    lab, name = proxied.lab, "pg2"
    plan = InstallPlan(host=name, address=lab.hosts[name].address, ssh_user="pgha", method="wheelhouse",
                       version="4.1.5", venv="/opt/pgha-pip-check", config_dir="/etc/patroni",
                       os_family="debian", pg_version=15, etcd_member=False, wheelhouse="/build/no-uv")
    upload = "mkdir -p ~/pgha-wheelhouse/no-uv && tar -xf - -C ~/pgha-wheelhouse/no-uv"
    try:
        with subprocess.Popen(["tar", "-C", str(lab.inv.wheelhouse), "--exclude=uv-*.whl", "-cf", "-", "."],
                              stdout=subprocess.PIPE) as tar:
            copied = subprocess.run(lab.ssh_argv(name, upload), stdin=tar.stdout, capture_output=True,
                                    timeout=120, check=False)
        assert copied.returncode == 0, copied.stderr
        assert "uv-" not in _ssh(lab, name, "ls ~/pgha-wheelhouse/no-uv")
        done = lab.ssh(name, steps.as_root(steps.patroni_script(plan), "pgha"), check=False, timeout=300)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().splitlines()[-1] == "patroni 4.1.5"
        site = "/opt/pgha-pip-check/lib/python3.11/site-packages"
        assert _ssh(lab, name, f"cat {site}/patroni-*.dist-info/INSTALLER") == "pip"
        assert _ssh(lab, name, "/usr/local/bin/patroni --version") == "patroni 4.1.5"
    finally:
        lab.ssh(name, "sudo rm -rf /opt/pgha-pip-check ~/pgha-wheelhouse/no-uv /usr/local/bin/patroni "
                      "/usr/local/bin/patronictl", check=False)


def _types(cli: PulumiCli) -> dict[str, str]:
    state = json.loads(cli.run("stack", "export", "--stack", "lab").stdout)
    return {r["urn"].rsplit("::", 1)[1]: r["type"] for r in state["deployment"]["resources"]}


def _patroni_pids(lab: Lab) -> dict[str, str]:
    return {n: _ssh(lab, n, "systemctl show -p MainPID --value patroni") for n in ("pg1", "pg2", "pg3")}


@dataclass
class Upgraded:
    lab: Lab
    cli: PulumiCli
    before: dict[str, str]
    after: dict[str, str]
    pids_before: dict[str, str]
    leader_before: str
    load: WriteLoad
    up_seconds: float
    ssh_sessions: int
    output: str


@pytest.fixture(scope="module")
def upgraded(tmp_path_factory: pytest.TempPathFactory, pulumi_bin: Path) -> Iterator[Upgraded]:
    base = tmp_path_factory.mktemp("install-upgrade")
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
        before = _types(cli)
        outputs = cli.run("stack", "output", "--json", "--show-secrets", "--stack", "lab").stdout
        password = json.loads(outputs)["superuserPassword"]
        wait_until(lambda: _streaming("10.77.0.11", {"pg1", "pg2", "pg3"}), timeout=60, what="3 members")
        load = WriteLoad("10.77.0.14", 5000, password)
        load.prepare()
        load.start()
        load.assert_progressing()
        pids, leader = _patroni_pids(lab), _leader()
        install_today(project)
        sessions = ssh_accepts(lab)
        started = time.monotonic()
        up = cli.run("up", "--yes", "--skip-preview", "--stack", "lab")
        elapsed = time.monotonic() - started
        sessions = ssh_accepts(lab) - sessions
        load.assert_progressing()
        load.stop()
        print(f"\nupgrade up: {elapsed:.1f}s, {sessions} SSH sessions, {len(load.acknowledged)} writes "
              f"acknowledged, {len(load.failures)} failed")
        yield Upgraded(lab=lab, cli=cli, before=before, after=_types(cli), pids_before=pids,
                       leader_before=leader, load=load, up_seconds=elapsed, ssh_sessions=sessions,
                       output=up.stdout)
        cli.run("destroy", "--yes", "--skip-preview", "--stack", "lab", check=False)
    finally:
        Lab.down()


def test_upgrade_replaces_patroni_install_by_the_host_steps(upgraded: Upgraded) -> None:
    old = {n for n, t in upgraded.before.items() if t.endswith("pgha:PatroniInstall")}
    assert old == {f"pgha-lab-install-pg{i}" for i in (1, 2, 3)}, upgraded.before
    assert not any(t.endswith("pgha:PatroniInstall") for t in upgraded.after.values())
    for i in (1, 2, 3):
        assert upgraded.after[f"pgha-lab-install-pg{i}"] == "pgha:index:PatroniHostInstall"
        for step in STEPS:
            assert upgraded.after[f"pgha-lab-install-pg{i}-{step}"] == "command:remote:Command"
        assert upgraded.after[f"pgha-lab-install-pg{i}-wheelhouse"] == "command:remote:CopyToRemote"
        assert upgraded.after[f"pgha-lab-install-pg{i}-cleanup"] == CLEANUP
    # Nothing else changed: the same resources otherwise.
    others = {n: t for n, t in upgraded.before.items() if n not in old}
    assert {n: upgraded.after.get(n) for n in others} == others


def test_upgrade_keeps_patroni_installed_and_running(upgraded: Upgraded) -> None:
    lab = upgraded.lab
    for name in ("pg1", "pg2", "pg3"):
        assert _ssh(lab, name, "systemctl is-active patroni") == "active", name
        installed = ("test -x /opt/patroni/bin/patroni && test -f /etc/systemd/system/patroni.service && "
                     "test -e /opt/patroni/.pgha-host-install && readlink /usr/local/bin/patronictl")
        assert _ssh(lab, name, installed) == "/opt/patroni/bin/patronictl", name
    assert _patroni_pids(lab) == upgraded.pids_before  # never restarted
    assert _leader() == upgraded.leader_before
    assert upgraded.load.failures == [], upgraded.load.failures[:5]
    assert upgraded.load.missing() == []
    upgraded.cli.run("preview", "--stack", "lab", "--expect-no-changes")
