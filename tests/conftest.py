"""Shared helpers: the real Pulumi CLI from .tools/bin, run against a backend of the test's own."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def pytest_configure(config: pytest.Config) -> None:
    for marker, text in (
        ("engine", "drives the real Pulumi CLI (no lab hosts)"),
        ("lab", "boots lab hosts (root, systemd-nspawn)"),
        ("cluster", "deploys a real cluster on lab hosts with the Pulumi CLI"),
        ("local", "runs real server software on this machine as root (no lab hosts)"),
    ):
        config.addinivalue_line("markers", f"{marker}: {text}")


def private_pulumi_home(home: Path) -> Path:
    """A PULUMI_HOME of the test's own (workspaces, credentials) that shares the plugins
    `scripts/install-pulumi` installed (the pulumi-command provider)."""
    shared = Path(os.environ.get("PULUMI_HOME") or Path.home() / ".pulumi") / "plugins"
    home.mkdir(parents=True, exist_ok=True)
    link = home / "plugins"
    if shared.is_dir() and not link.exists():
        link.symlink_to(shared)
    return home


class PulumiCli:
    """Runs the project's pinned `pulumi` in one project directory with an isolated backend."""

    def __init__(self, project_dir: Path, backend_dir: Path, passphrase: str = "test-passphrase"):
        self.project_dir = project_dir
        backend_dir.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ)
        self.env.update({
            "PATH": f"{ROOT / '.tools' / 'bin'}:{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}",
            "PULUMI_BACKEND_URL": f"file://{backend_dir}",
            "PULUMI_CONFIG_PASSPHRASE": passphrase,
            "PULUMI_SKIP_UPDATE_CHECK": "true",
            "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
            "PULUMI_HOME": str(private_pulumi_home(backend_dir / ".pulumi-home")),
        })
        self.env.pop("PULUMI_CONFIG_PASSPHRASE_FILE", None)

    def run(self, *args: str, check: bool = True, timeout: float = 1800,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["pulumi", *args, "--non-interactive"], cwd=self.project_dir, env=self.env,
            text=True, capture_output=True, timeout=timeout, input=input,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"pulumi {' '.join(args)} failed ({proc.returncode}):\n"
                f"{proc.stdout[-6000:]}\n{proc.stderr[-4000:]}")
        return proc


@pytest.fixture(scope="session")
def pulumi_bin() -> Path:
    path = ROOT / ".tools" / "bin" / "pulumi"
    if not path.exists():
        pytest.fail("the Pulumi CLI is not installed: run `make setup`")
    return path


def copy_project(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "Pulumi.*.yaml"))
    return dst


def fixture_stack(fixture: Path, tmp_path: Path) -> tuple[PulumiCli, Path]:
    """A copy of a fixture project under tests/fixtures/ with a stack `test` of its own backend."""
    work = copy_project(fixture, tmp_path / "project")
    # A fixture's Pulumi.yaml points at the checkout's .venv relative to tests/fixtures/<name>.
    (work / "Pulumi.yaml").write_text(
        (fixture / "Pulumi.yaml").read_text().replace("../../../.venv", str(ROOT / ".venv")))
    cli = PulumiCli(work, tmp_path / "state")
    cli.run("stack", "init", "test")
    return cli, work
