"""`make lab-up` / `make lab-down`: the lab's hosts and the `lab` stack on them.

up:   keep (or boot) four lab hosts, create the lab stack the first time, `pulumi up --refresh`
      it, print how to connect. A second run keeps the hosts and the cluster: it is a no-op.
down: `pulumi destroy` the lab stack (best effort), take the hosts down in every case, and
      forget what the state still claims about hosts that no longer exist.

The lab stack is a local stack like any other: the backend and passphrase come from
scripts/env.sh (`.pulumi-state/`, `.pulumi-passphrase`), so `pulumi ... --stack lab` works in
the README's shell. Its config, stacks/Pulumi.lab.yaml, is machine-local like the hosts
(git-ignored), made from lab/stack.yaml the first time.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab import Lab  # noqa: E402
from lab import config as lab_config  # noqa: E402
from lab.api import host_names  # noqa: E402

STACK = "lab"
HOSTS = host_names(4)
TEMPLATE = ROOT / "lab" / "stack.yaml"
LAB_CA_FILE = ROOT / "lab-ca.crt"  # the lab stack's CA bundle (public), for psql's sslrootcert; git-ignored
STACK_FILE = ROOT / "stacks" / f"Pulumi.{STACK}.yaml"
WHEELHOUSE_LINK = lab_config.cache_dir() / "wheelhouse"
# Passphrase of the throwaway stacks that tests and benchmarks create beside the lab
# (never the lab stack's, which uses the local passphrase, nor a real stack's).
LAB_PASSPHRASE = "pgha-lab-only"


def say(text: str) -> None:
    print(f"lab-stack: {text}", file=sys.stderr, flush=True)


def pulumi_env() -> dict[str, str]:
    """The environment scripts/env.sh gives a user's shell."""
    out = subprocess.run(["bash", "-c", f"source {shlex.quote(str(ROOT / 'scripts' / 'env.sh'))} && env -0"],
                         check=True, capture_output=True)
    return dict(item.split("=", 1) for item in out.stdout.decode().split("\0") if "=" in item)


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


def stack_exists() -> bool:
    listed = subprocess.run(["pulumi", "stack", "ls", "--json", "--non-interactive"], cwd=ROOT,
                            env=pulumi_env(), capture_output=True, text=True, check=False)
    try:
        return any(s.get("name") == STACK for s in json.loads(listed.stdout or "[]"))
    except ValueError:
        return False


def claimed_resources() -> int:
    """How many resources the lab stack's state claims (0 when there is no stack)."""
    if not stack_exists():
        return 0
    exported = pulumi("stack", "export", check=False, capture=True)
    try:
        resources = json.loads(exported.stdout)["deployment"].get("resources") or []
    except (ValueError, KeyError):
        return 0
    return sum(1 for r in resources if r.get("type", "").startswith("pulumi-python:dynamic"))


def ensure_stack() -> None:
    Path(pulumi_env()["PULUMI_BACKEND_URL"].removeprefix("file://")).mkdir(parents=True, exist_ok=True)
    if not STACK_FILE.exists():
        STACK_FILE.write_text(TEMPLATE.read_text())
        say(f"created {STACK_FILE.relative_to(ROOT)} from {TEMPLATE.relative_to(ROOT)} (edit it for day-2)")
    if not stack_exists():
        subprocess.run(["pulumi", "stack", "init", STACK, "--non-interactive"], cwd=ROOT, env=pulumi_env(),
                       check=True)


def ensure_hosts() -> Lab:
    """The lab's hosts, kept when they exist: never wiped under a stack that claims them."""
    try:
        lab = Lab.load()
    except RuntimeError:
        lab = None
    if lab is not None and sorted(lab.hosts) == sorted(HOSTS):
        stopped = [n for n in HOSTS if not lab.is_running(n)]
        for name in stopped:
            say(f"booting {name} again from its disk")
            lab.start(name)
        if not stopped:
            say(f"keeping the running hosts {', '.join(HOSTS)}")
        return lab
    claimed = claimed_resources()
    if claimed:
        found = ", ".join(sorted(lab.hosts)) if lab is not None else "none"
        raise SystemExit(
            f"lab-stack: the lab stack claims {claimed} resources on {', '.join(HOSTS)}, but the lab's hosts "
            f"are {found}. Nothing was changed. `make lab-down` takes down whatever is left and forgets "
            f"the stack's state; then `make lab-up` builds a new lab.")
    return Lab.up(len(HOSTS))


def up() -> None:
    lab = ensure_hosts()
    link_wheelhouse(lab)
    ensure_stack()
    pulumi("up", "--yes", "--skip-preview", "--refresh")
    outputs = json.loads(pulumi("stack", "output", "--json", capture=True).stdout)
    primary = outputs["primary"][0].removeprefix("postgresql://")
    host, port = primary.split(":")
    root = shlex.quote(str(ROOT))
    tls = ""
    if outputs.get("tlsCa"):
        # pgha:tls (on for the lab stack): the CA bundle clients verify the servers with.
        LAB_CA_FILE.write_text(outputs["tlsCa"])
        tls = f" sslmode=verify-full sslrootcert={LAB_CA_FILE}"
    print(f"""
The lab cluster is up. Members:
{json.dumps(outputs.get('members'), indent=2)}

Connect through HAProxy (writes go to the leader, port {port}; replicas on {int(port) + 1}), from any shell:
  cd {root} && source scripts/env.sh
  export PGPASSWORD="$(pulumi stack output superuserPassword --show-secrets --stack {STACK})"
  psql "host={host} port={port} user=postgres dbname=postgres{tls}"
On a node, as in the runbook:
  cd {root} && python3 -m lab ssh pg1 sudo patronictl -c /etc/patroni/patroni.yml list
Day-2 (after the first two lines): edit stacks/Pulumi.{STACK}.yaml, then
  pulumi preview --diff --stack {STACK}
  pulumi up --stack {STACK}
""")


def down() -> None:
    """Always ends with no hosts; the state never outlives them."""
    try:
        Lab.load()
        hosts_up = True
    except RuntimeError:
        hosts_up = False
    claimed = claimed_resources()
    if claimed and hosts_up:
        result = pulumi("destroy", "--yes", "--skip-preview", check=False)
        if result.returncode != 0:
            say("pulumi destroy did not complete (see above); the hosts go down anyway")
    Lab.down()
    if claimed_resources():
        # The hosts are gone: what the state still claims exists nowhere.
        pulumi("stack", "rm", "--force", "--yes", "--preserve-config", check=False)
        say("the lab stack's state named resources on hosts that are gone: removed it "
            "(stacks/Pulumi.lab.yaml is kept)")
    say("the lab is down")


if __name__ == "__main__":
    {"up": up, "down": down}[sys.argv[1] if len(sys.argv) > 1 else "up"]()
