"""Fixtures for cluster tests: four lab hosts and the real `lab` stack deployed on them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
import yaml

from lab import Lab
from scripts.lab_stack import LAB_PASSPHRASE, link_wheelhouse
from tests.conftest import ROOT, PulumiCli
from tests.unit.configs import lab_raw

PRIMARY = ("10.77.0.14", 5000)
REPLICAS = ("10.77.0.14", 5001)
NODES = {"pg1": "10.77.0.11", "pg2": "10.77.0.12", "pg3": "10.77.0.13"}


@dataclass
class Deployed:
    lab: Lab
    cli: PulumiCli
    up_seconds: float

    def outputs(self) -> dict[str, Any]:
        return json.loads(self.cli.run("stack", "output", "--json", "--show-secrets").stdout)

    def password(self) -> str:
        return self.outputs()["superuserPassword"]

    def connect(self, endpoint: tuple[str, int], **kw: Any) -> psycopg.Connection:
        host, port = endpoint
        return psycopg.connect(host=host, port=port, user="postgres", dbname="postgres",
                               password=self.password(), connect_timeout=5, **kw)


def cluster_view(address: str = "10.77.0.11") -> dict[str, Any]:
    return requests.get(f"http://{address}:8008/cluster", timeout=5).json()


def patroni_members(addresses: tuple[str, ...] = ("10.77.0.11", "10.77.0.12", "10.77.0.13", "10.77.0.15"),
                    ) -> dict[str, dict[str, Any]]:
    """Patroni's GET /cluster members by name, from the first node that answers."""
    for address in addresses:
        try:
            view = requests.get(f"http://{address}:8008/cluster", timeout=3).json()
            return {m["name"]: m for m in view["members"]}
        except (requests.RequestException, ValueError):
            continue
    raise AssertionError("no Patroni node answers /cluster")


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except Exception as err:  # noqa: BLE001 - kept for the failure message
            last = err
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def ssh_accepts(lab: Lab) -> int:
    """Accepted SSH logins on every host so far (from sshd's journal)."""
    total = 0
    for name in lab.hosts:
        out = lab.ssh(name, "sudo journalctl -u ssh --no-pager -o cat | grep -c 'Accepted publickey' || true",
                      check=False)
        total += int((out.stdout or "0").strip() or 0)
    return total


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory, pulumi_bin: Path) -> Iterator[Deployed]:
    lab = Lab.up(4)
    try:
        link_wheelhouse(lab)
        project = ProjectCopy.with_stack(tmp_path_factory.mktemp("cluster"), "lab")
        project.write_config(project.base_config)
        cli = project.cli
        started = time.monotonic()
        cli.run("up", "--yes", "--skip-preview", "--stack", "lab")
        elapsed = time.monotonic() - started
        print(f"\npulumi up (3 etcd+Patroni hosts, 1 HAProxy host): {elapsed:.1f}s")
        yield Deployed(lab=lab, cli=cli, up_seconds=elapsed)
        cli.run("destroy", "--yes", "--skip-preview", "--stack", "lab", check=False)
    finally:
        Lab.down()




def lab_stack_config() -> dict[str, Any]:
    """The lab stack's config without the `pgha:` prefix, as tests and benchmarks start from it:
    with TLS off unless they turn it on (they talk plaintext to the hosts; test_tls*.py, test_lab_stack
    and bench B8 deploy with TLS on, as the lab stack itself does)."""
    return lab_raw()


class ProjectCopy:
    """The program copied beside a stack file the test writes (the checkout stays untouched)."""

    def __init__(self, base: Path, stack: str) -> None:
        self.dir = base / "project"
        self.dir.mkdir(parents=True)
        for name in ("Pulumi.yaml", "__main__.py"):
            shutil.copy(ROOT / name, self.dir / name)
        for name in ("components", "templates"):
            shutil.copytree(ROOT / name, self.dir / name, ignore=shutil.ignore_patterns("__pycache__"))
        (self.dir / ".venv").symlink_to(ROOT / ".venv")
        (self.dir / "stacks").mkdir()
        self.stack = stack
        self.last_review = ""
        self.last_preview_json = ""
        self.cli = PulumiCli(self.dir, base / "state", passphrase=LAB_PASSPHRASE)
        self.base_config = lab_stack_config()

    @classmethod
    def with_stack(cls, base: Path, stack: str) -> ProjectCopy:
        """A copy whose stack exists (empty state), ready for write_config and `up`."""
        project = cls(base, stack)
        project.cli.run("stack", "init", stack)
        return project

    def write_config(self, config: dict[str, Any]) -> None:
        path = self.dir / "stacks" / f"Pulumi.{self.stack}.yaml"
        # Keep the encryption salt `stack init` wrote: the state's secrets were made with it.
        existing = yaml.safe_load(path.read_text()) if path.exists() else None
        doc: dict[str, Any] = {}
        if isinstance(existing, dict) and existing.get("encryptionsalt"):
            doc["encryptionsalt"] = existing["encryptionsalt"]
        doc["config"] = {f"pgha:{k}": v for k, v in config.items()}
        path.write_text(yaml.safe_dump(doc, sort_keys=False))

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.cli.run(*args, "--stack", self.stack, check=check)

    def preview_changes(self) -> dict[str, dict[str, list[str]]]:
        """What a reviewer reads in `pulumi preview --diff`: {op: {resource name: changed inputs}}.

        The inputs are the top-level names of the engine's property-level diff (what the CLI
        shows); an update found only by a refresh (drift) lists none. The same preview's
        review summary (what CI posts on the pull request) is kept in `last_review`.
        """
        from review.markdown import render
        from review.plan import build_plan
        from review.preview import parse_preview

        raw = self.run("preview", "--json", "--show-sames").stdout
        self.last_preview_json = raw
        preview = parse_preview(raw)
        self.last_review = render(preview, build_plan(preview), self.stack, "")
        changes: dict[str, dict[str, list[str]]] = {}
        for step in json.loads(raw).get("steps", []):
            if step["op"] == "same":
                continue
            keys = {re.split(r"[.\[]", k)[0] for k in step.get("detailedDiff") or {}}
            keys |= set(step.get("diffReasons") or []) if step["op"] != "update" else set()
            changes.setdefault(step["op"], {})[step["urn"].rsplit("::", 1)[-1]] = sorted(keys)
        return changes


def install_resources(host: str, scope: str = "pgha-lab", wheelhouse: bool = True) -> set[str]:
    """The resources of one host's install (components/host_install.py): the component and its steps."""
    parts = ["patroni", "distro", "unit", "cleanup", *(["wheelhouse"] if wheelhouse else [])]
    base = f"{scope}-install-{host}"
    return {base, *(f"{base}-{part}" for part in parts)}


def host(name: str, roles: list[str]) -> dict[str, Any]:
    return {"name": name, "address": f"10.77.0.{10 + int(name[2:])}", "roles": roles}
