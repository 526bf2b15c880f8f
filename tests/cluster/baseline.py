"""An older pgha's program, for the tests that upgrade a stack it deployed."""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

PROGRAM = ("Pulumi.yaml", "__main__.py", "components", "templates")


def baseline_tree(dest: Path, commit: str) -> None:
    """The program and the lab stack config of `commit` (needs a clone with history)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", commit, *PROGRAM,
                              "stacks/Pulumi.lab.yaml"], capture_output=True, check=False)
    if archive.returncode != 0:
        pytest.fail(f"git archive {commit} failed (a clone with history is needed): "
                    f"{archive.stderr.decode()[-500:]}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(dest, filter="data")


def install_today(project: Path) -> None:
    """Today's program in place of the older one. The stack config stays, except that it says
    pgha:tls is off (the older pgha deployed in plaintext; TLS is on by default today and a
    deployed cluster does not move to it)."""
    stack = project / "stacks" / "Pulumi.lab.yaml"
    doc = yaml.safe_load(stack.read_text())
    doc["config"].setdefault("pgha:tls", {"enabled": False})
    stack.write_text(yaml.safe_dump(doc, sort_keys=False))
    for name in PROGRAM:
        target = project / name
        if target.is_dir():
            shutil.rmtree(target)
            shutil.copytree(ROOT / name, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, target)
