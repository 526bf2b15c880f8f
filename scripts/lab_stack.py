"""`make lab-up` / `make lab-down`: the lab's hosts and the `lab` stack on them.

up:   boot four lab hosts, `pulumi up` the lab stack, print how to connect.
down: `pulumi destroy` the lab stack, then take the hosts down.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab import Lab  # noqa: E402
from lab import config as lab_config  # noqa: E402

STACK = "lab"
# Lab-only passphrase, matching the encryptionsalt committed in stacks/Pulumi.lab.yaml.
LAB_PASSPHRASE = "pgha-lab-only"
WHEELHOUSE_LINK = lab_config.cache_dir() / "wheelhouse"


def pulumi_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PULUMI_CONFIG_PASSPHRASE_FILE", None)
    env["PULUMI_CONFIG_PASSPHRASE"] = LAB_PASSPHRASE
    env.setdefault("PULUMI_BACKEND_URL", f"file://{ROOT / '.pulumi-state'}")
    env["PATH"] = f"{ROOT / '.tools' / 'bin'}:{ROOT / '.venv' / 'bin'}:{env['PATH']}"
    env["PULUMI_SKIP_UPDATE_CHECK"] = "true"
    env["PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION"] = "true"
    return env


def pulumi(*args: str, check: bool = True, capture: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["pulumi", *args, "--stack", STACK, "--non-interactive"], cwd=ROOT,
                          env=pulumi_env(), check=check, text=True, capture_output=capture)


def link_wheelhouse(lab: Lab) -> None:
    """The lab stack names a stable wheelhouse path; point it at the current build."""
    target = Path(lab.inv.wheelhouse)
    if WHEELHOUSE_LINK.is_symlink() and WHEELHOUSE_LINK.resolve() == target.resolve():
        return
    tmp = WHEELHOUSE_LINK.with_name(".wheelhouse-link")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    tmp.replace(WHEELHOUSE_LINK)


def select_stack() -> None:
    Path(pulumi_env()["PULUMI_BACKEND_URL"].removeprefix("file://")).mkdir(parents=True, exist_ok=True)
    subprocess.run(["pulumi", "stack", "select", STACK, "--create", "--non-interactive"], cwd=ROOT,
                   env=pulumi_env(), check=True)


def up() -> None:
    lab = Lab.up(4)
    link_wheelhouse(lab)
    select_stack()
    pulumi("up", "--yes", "--skip-preview")
    outputs = json.loads(pulumi("stack", "output", "--json", capture=True).stdout)
    primary = outputs["primary"][0].removeprefix("postgresql://")
    host, port = primary.split(":")
    print(f"""
The lab cluster is up. Members:
{json.dumps(outputs.get('members'), indent=2)}

Connect through HAProxy (writes go to the leader, port {port}; replicas on {int(port) + 1}):
  export PGPASSWORD="$(PULUMI_CONFIG_PASSPHRASE={LAB_PASSPHRASE} .tools/bin/pulumi stack output \\
      superuserPassword --show-secrets --stack {STACK})"
  psql "host={host} port={port} user=postgres dbname=postgres"
On a node, as in the runbook:
  python -m lab ssh pg1 sudo patronictl -c /etc/patroni/patroni.yml list
""")


def down() -> None:
    try:
        Lab.load()
        hosts_up = True
    except RuntimeError:
        hosts_up = False
    if hosts_up:
        select_stack()
        pulumi("destroy", "--yes", "--skip-preview")
    Lab.down()


if __name__ == "__main__":
    {"up": up, "down": down}[sys.argv[1] if len(sys.argv) > 1 else "up"]()
