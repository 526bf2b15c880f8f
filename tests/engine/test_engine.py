"""The toolchain end to end: the pinned CLI, the official Python language host, a dynamic provider
and a pulumi-command resource."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import ROOT, PulumiCli, fixture_stack

pytestmark = pytest.mark.engine
FIXTURE = ROOT / "tests" / "fixtures" / "engine"
SECRET = "fixture-secret-7d1f0c"


@pytest.fixture()
def project(tmp_path: Path, pulumi_bin: Path) -> tuple[PulumiCli, Path]:
    cli, _ = fixture_stack(FIXTURE, tmp_path)
    marker = tmp_path / "marker.txt"
    cli.run("config", "set", "markerPath", str(marker))
    cli.run("config", "set", "--secret", "token", SECRET)
    return cli, marker


def _pinned() -> dict[str, str]:
    return dict(line.split("=", 1) for line in (ROOT / "scripts" / "versions.env").read_text().splitlines()
                if line and not line.startswith("#"))


def test_version_is_pinned(pulumi_bin: Path, tmp_path: Path) -> None:
    pinned = _pinned()
    cli = PulumiCli(ROOT, tmp_path / "state")
    assert cli.run("version").stdout.strip() == f"v{pinned['PULUMI_VERSION']}"
    requirements = (ROOT / "requirements.txt").read_text()
    assert f"pulumi=={pinned['PULUMI_VERSION']}" in requirements


def test_preview_up_export_destroy(project: tuple[PulumiCli, Path]) -> None:
    cli, marker = project
    preview = cli.run("preview", "--diff")
    assert "+ 2 to create" in preview.stdout, preview.stdout
    assert not marker.exists(), "preview must not create anything"

    cli.run("up", "--yes")
    assert marker.read_text() == SECRET

    outputs = json.loads(cli.run("stack", "output", "--json").stdout)
    assert outputs == {"path": str(marker), "size": len(SECRET)}

    exported = cli.run("stack", "export").stdout
    assert SECRET not in exported, "a secret input leaked into the state in plaintext"
    state = json.loads(exported)
    marker_res = next(r for r in state["deployment"]["resources"] if r["urn"].endswith("::marker"))
    assert "ciphertext" in marker_res["outputs"]["content"]

    again = cli.run("preview", "--diff")
    assert "2 unchanged" in again.stdout, again.stdout

    cli.run("destroy", "--yes")
    assert not marker.exists()


def test_about_lists_python_language_plugin(project: tuple[PulumiCli, Path]) -> None:
    cli, _ = project
    about = cli.run("about").stdout
    pinned = _pinned()
    # The official host reports the release it was built from (pgha's own host did not).
    assert re.search(rf"language\s+python\s+{re.escape(pinned['PULUMI_VERSION'])}", about), about
    assert re.search(rf"resource\s+command\s+{re.escape(pinned['PULUMI_COMMAND_VERSION'])}", about), about
    assert str(ROOT / ".venv" / "bin" / "python") in about


def test_pulumi_command_resource(project: tuple[PulumiCli, Path]) -> None:
    cli, _ = project
    cli.env["PGHA_FIXTURE_COMMAND"] = "1"
    cli.run("up", "--yes")
    outputs = json.loads(cli.run("stack", "output", "--json").stdout)
    assert outputs["command_stdout"] == "hello-from-command"
    cli.run("destroy", "--yes")
