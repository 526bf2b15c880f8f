"""`make lab-up` / `make lab-down` as a newcomer meets them (scripts/lab_stack.py).

In a copy of the project (its own .pulumi-state and .pulumi-passphrase, as a fresh checkout
has): the first lab-up boots the hosts and deploys; the connection lines it prints work
verbatim in a new shell; `pulumi preview --stack lab` works after `source scripts/env.sh`;
a second lab-up keeps the hosts and the cluster (a no-op); lab-down leaves no hosts, also
when the hosts are already gone under a stack that still claims them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import Lab
from lab import hosts as lab_hosts
from tests.conftest import ROOT

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1800)]

COPIED = ("Pulumi.yaml", "__main__.py", "components", "templates", "lab", "scripts")
# A new shell: no variable of this test process leaks into it.
CLEAN_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
             "LANG": "C.UTF-8"}


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("newcomer") / "pgha"
    root.mkdir()
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, root / name)
    (root / "stacks").mkdir()
    for link in (".venv", ".tools"):
        (root / link).symlink_to(ROOT / link)
    Lab.down()
    try:
        yield root
    finally:
        shell(root, "python3 scripts/lab_stack.py down", check=False)
        Lab.down()


def shell(root: Path, script: str, check: bool = True,
          timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """`script` in a new login-less bash, as a user types it (after `cd` into the checkout)."""
    proc = subprocess.run(["bash", "-c", f"cd {root} && {script}"], env=CLEAN_ENV, text=True,
                          capture_output=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script!r} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-4000:]}")
    return proc


def lab_up(root: Path) -> subprocess.CompletedProcess[str]:
    # What `make lab-up` runs after `make setup` (the toolchain and venv are linked in).
    return shell(root, "source scripts/env.sh && scripts/setup-backend && python3 scripts/lab_stack.py up")


def init_pids() -> dict[str, int | None]:
    lab = Lab.load()
    return {name: lab_hosts.running_pids(lab.state_dir, name)[1] for name in lab.hosts}


def test_lab_up_prints_lines_that_work_in_a_new_shell(checkout: Path) -> None:
    first = lab_up(checkout)
    block = first.stdout.split("from any shell:", 1)[1]
    lines = [line.strip() for line in block.splitlines()[1:4]]
    assert lines[0].startswith("cd ") and "source scripts/env.sh" in lines[0], first.stdout
    assert lines[1].startswith("export PGPASSWORD="), first.stdout
    assert lines[2].startswith("psql ") and "sslmode=verify-full sslrootcert=" in lines[2], first.stdout
    # The lab stack has TLS on: the session is encrypted, the server verified against the stack's CA.
    query = " -XAtc 'SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()'"
    out = subprocess.run(["bash", "-c", "\n".join([*lines[:2], lines[2] + query])],
                         env=CLEAN_ENV, text=True, capture_output=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "t", (out.stdout, out.stderr)
    assert (checkout / "stacks" / "Pulumi.lab.yaml").exists()

    preview = shell(checkout, "source scripts/env.sh && pulumi preview --stack lab --expect-no-changes")
    assert "unchanged" in preview.stdout


def test_a_second_lab_up_keeps_the_hosts_and_the_cluster(checkout: Path) -> None:
    before = init_pids()
    second = lab_up(checkout)
    assert init_pids() == before, "lab-up re-created hosts under the stack"
    summary = second.stdout[second.stdout.rfind("Resources:"):]
    assert "unchanged" in summary and not re.search(r"to (create|update|replace|delete)", summary), summary


def test_lab_down_leaves_no_hosts_even_when_they_are_already_gone(checkout: Path) -> None:
    Lab.down()  # the hosts vanish under a stack that still claims them
    down = shell(checkout, "python3 scripts/lab_stack.py down")
    assert "removed it" in down.stderr, down.stderr
    with pytest.raises(RuntimeError):
        Lab.load()
    again = shell(checkout, "python3 scripts/lab_stack.py down")
    assert "the lab is down" in again.stderr
    assert not os.path.exists("/var/lib/pgha-lab/inventory.json")
