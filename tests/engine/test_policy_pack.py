"""The policy pack (policy/) run by the real CLI on previews of pgha stacks; a preview touches no host.

Four previews: the shipped prod example (compliant), a production stack breaking every production
rule the program lets through, and a non-production stack breaking the rules that are advisory
there, once with policy/config/staging.json and once with a stricter level for one rule.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from policy import pgha_checks
from policy.pgha_checks import ETCD_MEMBER, PATRONI_NODE, RULES, Resource
from tests.conftest import ROOT, PulumiCli, copy_project

pytestmark = pytest.mark.engine
PACK = ROOT / "policy"
PASSWORDS = {name: f"policy-test-{name}" for name in (
    "superuserPassword", "replicationPassword", "rewindPassword", "restApiPassword")}
SSH = {"user": "deploy", "privateKeyFile": "/etc/pgha/keys/test_ed25519",
       "knownHostsFile": "/etc/pgha/known_hosts"}
# One line per violation in the CLI's "Policies:" block: level, policy, resource, description, message.
VIOLATION_RE = re.compile(r"^ +- \[(\w+)\] +(\S+) +\((.*)\)\n +(.*)\n +(.*)$", re.MULTILINE)


@dataclass(frozen=True, order=True)
class Reported:
    level: str
    policy: str
    message: str


@dataclass
class Preview:
    returncode: int
    output: str
    seconds: float

    @property
    def policies(self) -> str:
        """The CLI's "Policies:" block (up to the next section)."""
        block = self.output.split("\nPolicies:\n", 1)
        assert len(block) == 2, f"no Policies: section in the preview:\n{self.output[-4000:]}"
        return block[1].split("\n\n", 1)[0]

    def reported(self) -> list[Reported]:
        return sorted(Reported(level, policy, message)
                      for level, policy, _where, _description, message in VIOLATION_RE.findall(self.policies))

    def levels(self) -> dict[str, list[str]]:
        by_policy: dict[str, list[str]] = {}
        for item in self.reported():
            by_policy.setdefault(item.policy, []).append(item.level)
        return by_policy

    def message(self, policy: str) -> str:
        return "\n".join(r.message for r in self.reported() if r.policy == policy)


class PolicyProject:
    """The program copied into a temporary directory, with stacks on a backend of its own."""

    def __init__(self, base: Path) -> None:
        self.dir = base / "project"
        self.dir.mkdir(parents=True)
        for name in ("Pulumi.yaml", "__main__.py"):
            shutil.copy(ROOT / name, self.dir / name)
        for name in ("components", "templates"):
            copy_project(ROOT / name, self.dir / name)
        (self.dir / ".venv").symlink_to(ROOT / ".venv")
        (self.dir / "stacks").mkdir()
        self.cli = PulumiCli(self.dir, base / "state")

    def stack(self, name: str, config: dict[str, Any], secrets: dict[str, str] | None = None) -> str:
        self.cli.run("stack", "init", name)
        if secrets:
            self.cli.run("config", "set-all", "--stack", name, "--path",
                         *(f"--secret=pgha:{key}={value}" for key, value in secrets.items()))
        path = self.dir / "stacks" / f"Pulumi.{name}.yaml"
        doc = yaml.safe_load(path.read_text()) or {}
        doc.setdefault("config", {}).update({f"pgha:{key}": value for key, value in config.items()})
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return name

    def preview(self, stack: str, policy_config: Path | None) -> Preview:
        args = ["preview", "--stack", stack, "--policy-pack", str(PACK)]
        if policy_config is not None:
            args += ["--policy-pack-config", str(policy_config)]
        started = time.monotonic()
        proc = self.cli.run(*args, check=False, timeout=300)
        seconds = time.monotonic() - started
        print(f"\npulumi preview --stack {stack} --policy-pack policy"
              f"{f' --policy-pack-config {policy_config.name}' if policy_config else ''}: "
              f"exit {proc.returncode}, {seconds:.1f}s")
        return Preview(proc.returncode, proc.stdout + proc.stderr, seconds)


def example_stack(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "stacks" / f"Pulumi.{name}.yaml").read_text())
    return {key.removeprefix("pgha:"): value for key, value in doc["config"].items()}


@pytest.fixture(scope="module")
def pack() -> Path:
    started = time.monotonic()
    proc = subprocess.run([str(ROOT / "scripts" / "setup-policy-venv")], capture_output=True, text=True,
                          timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"scripts/setup-policy-venv failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    print(f"\nscripts/setup-policy-venv: {time.monotonic() - started:.1f}s ({proc.stderr.strip()})")
    return PACK


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, pulumi_bin: Path, pack: Path) -> PolicyProject:
    return PolicyProject(tmp_path_factory.mktemp("policy-pack"))


@pytest.fixture(scope="module")
def non_production(project: PolicyProject) -> str:
    """Valid outside production, and unwise: an even etcd count and data deleted on destroy. It also
    breaks the production-only rules (2 nodes, 1 HAProxy, no sync mode, manual restarts), which must
    not apply here."""
    return project.stack("dev", {
        "scope": "pg-dev", "production": False, "generatePasswords": True, "ssh": SSH,
        "hosts": [{"name": "dev-db1", "address": "10.20.1.11", "roles": ["etcd", "patroni"]},
                  {"name": "dev-db2", "address": "10.20.1.12", "roles": ["etcd", "patroni"]},
                  {"name": "dev-lb1", "address": "10.20.2.21", "roles": ["haproxy"]}],
        "postgresql": {"keepDataOnDestroy": False},
        "clientCidrs": ["10.20.0.0/16"],
        "restartPolicy": "manual",
    })


def test_prod_example_complies(project: PolicyProject) -> None:
    config = example_stack("prod")
    roles = {f"rolePasswords.{role['name']}": "policy-test-role" for role in config["roles"]}
    secrets = {**PASSWORDS, **roles}
    stack = project.stack("prod", config, secrets)
    preview = project.preview(stack, PACK / "config" / "prod.json")
    assert preview.returncode == 0, preview.output[-6000:]
    assert "pgha@v0.1.0" in preview.policies
    assert preview.reported() == [], preview.policies


def test_production_stack_violations(project: PolicyProject) -> None:
    stack = project.stack("prod-unwise", {
        "scope": "pg-unwise", "production": True, "ssh": SSH,
        # Three etcd members (odd, as validation demands of production), two Patroni nodes (valid:
        # patroni.minNodes defaults to 2), one HAProxy host.
        "hosts": [{"name": "db1", "address": "10.30.1.11", "roles": ["etcd", "patroni"]},
                  {"name": "db2", "address": "10.30.1.12", "roles": ["etcd", "patroni"]},
                  {"name": "etcd3", "address": "10.30.1.13", "roles": ["etcd"]},
                  {"name": "lb1", "address": "10.30.2.21", "roles": ["haproxy"]}],
        "postgresql": {"keepDataOnDestroy": False},
        "dcs": {"synchronousMode": False},
        "clientCidrs": ["10.30.0.0/16", "0.0.0.0/0"],
        "pgHba": ["hostssl all all ::/0 scram-sha-256"],
        "restartPolicy": "manual",
        # Plaintext, so that the open client line is a `host` one beside pgHba's `hostssl`.
        "tls": {"enabled": False},
    }, PASSWORDS)
    preview = project.preview(stack, PACK / "config" / "prod.json")
    assert preview.returncode != 0, preview.output[-6000:]
    assert preview.levels() == {
        "client-cidrs-not-open": ["mandatory", "mandatory"],
        "production-keep-data-on-destroy": ["mandatory"],
        "production-patroni-nodes": ["mandatory"],
        "production-haproxy-redundancy": ["advisory"],
        "production-rolling-restarts": ["advisory"],
        "production-synchronous-mode": ["advisory"],
    }, preview.policies
    assert "pgha:hosts: 2 host(s) have the patroni role (db1, db2)" in preview.message(
        "production-patroni-nodes")
    cidrs = preview.message("client-cidrs-not-open")
    assert "pgha:clientCidrs (or pgha:pgHba) admits every address" in cidrs
    assert "'host all all 0.0.0.0/0 scram-sha-256' matches 0.0.0.0/0" in cidrs
    assert "'hostssl all all ::/0 scram-sha-256' matches ::/0" in cidrs
    assert preview.message("production-keep-data-on-destroy").startswith(
        "pgha:postgresql.keepDataOnDestroy is false")
    assert "pgha:hosts: 1 host(s) have the haproxy role" in preview.message("production-haproxy-redundancy")
    assert "Set pgha:dcs.synchronousMode: true" in preview.message("production-synchronous-mode")
    assert preview.message("production-rolling-restarts").startswith("pgha:restartPolicy is 'manual'")


def test_non_production_advisories_pass(project: PolicyProject, non_production: str) -> None:
    preview = project.preview(non_production, PACK / "config" / "staging.json")
    assert preview.returncode == 0, preview.output[-6000:]
    assert preview.levels() == {"etcd-odd-members": ["advisory"], "keep-data-on-destroy": ["advisory"]}, \
        preview.policies
    assert preview.message("etcd-odd-members").startswith(
        "pgha:hosts: 2 hosts have the etcd role (dev-db1, dev-db2)")
    assert "(dev-db1, dev-db2)" in preview.message("keep-data-on-destroy")


def test_levels_are_configurable_per_stack(project: PolicyProject, non_production: str,
                                           tmp_path: Path) -> None:
    strict = tmp_path / "strict.json"
    strict.write_text(json.dumps({"keep-data-on-destroy": "mandatory"}))
    preview = project.preview(non_production, strict)
    assert preview.returncode != 0, preview.output[-6000:]
    assert preview.levels() == {"etcd-odd-members": ["advisory"], "keep-data-on-destroy": ["mandatory"]}, \
        preview.policies


# The rules themselves, without the CLI: what the program never lets through to a preview.

def etcd_members(count: int) -> list[Resource]:
    return [Resource(ETCD_MEMBER, f"urn:pulumi:s::pgha::{ETCD_MEMBER}::pg-etcd-e{i}", {"name": f"e{i}"})
            for i in range(count)]


def test_even_etcd_count_is_mandatory_in_production() -> None:
    # Validation refuses an even etcd count in production, so only the rule itself shows this.
    production = pgha_checks.evaluate(etcd_members(4), production=True)
    assert [v.message for v in production["production-etcd-odd-members"]] == [
        "pgha:hosts: 4 hosts have the etcd role (e0, e1, e2, e3); 4 members tolerate 1 failure(s), "
        "no more than 3 would, and a network split in halves leaves neither half a quorum. Add or "
        "remove the etcd role on one host for an odd count."]
    assert "etcd-odd-members" not in production
    assert pgha_checks.evaluate(etcd_members(3), production=True)["production-etcd-odd-members"] == []


@pytest.mark.parametrize(("line", "network"), [
    ("host all all 0.0.0.0/0 scram-sha-256", "0.0.0.0/0"),
    ("hostssl app app ::/0 scram-sha-256", "::/0"),
    ("host all all 10.0.0.1/0 scram-sha-256", "0.0.0.0/0"),
    ("host all all all scram-sha-256", "all"),
    ("host all all 0.0.0.0 0.0.0.0 scram-sha-256", "0.0.0.0/0"),
    ("host all all 10.20.0.0/16 scram-sha-256", None),
    ("host all all 10.20.0.0 255.255.0.0 scram-sha-256", None),
    ("host all all .example.com scram-sha-256", None),
    ("host all all samenet scram-sha-256", None),
    ("local all all scram-sha-256", None),
])
def test_open_network(line: str, network: str | None) -> None:
    assert pgha_checks.open_network(line) == network


@pytest.mark.parametrize("pg_hba", [
    ["host all all 10.20.0.0/16 scram-sha-256", "host all all ::/0 scram-sha-256"],
    {"50 clients 10.20.0.0/16": "host all all 10.20.0.0/16 scram-sha-256",
     "60 pgHba[0]": "host all all ::/0 scram-sha-256"},
], ids=["list", "keyed"])
def test_client_cidrs_read_either_pg_hba_shape(pg_hba: Any) -> None:
    node = Resource(PATRONI_NODE, f"urn:pulumi:s::pgha::{PATRONI_NODE}::pg-node-db1", {"pg_hba": pg_hba})
    violations = pgha_checks.evaluate([node], production=False)["client-cidrs-not-open"]
    assert len(violations) == 1
    assert "pg_hba line 'host all all ::/0 scram-sha-256' matches ::/0." in violations[0].message


def test_policy_config_files_name_the_pack_policies() -> None:
    names = {rule.name: rule for rule in RULES}
    for path in sorted((PACK / "config").glob("*.json")):
        config = json.loads(path.read_text())
        assert set(config) <= set(names), f"{path.name}: unknown policies {set(config) - set(names)}"
        assert set(config.values()) <= {"advisory", "mandatory", "disabled"}, path.name
    prod = json.loads((PACK / "config" / "prod.json").read_text())
    assert set(prod) == {r.name for r in RULES if r.applies(production=True)}
    assert prod == {r.name: r.level for r in RULES if r.applies(production=True)}
