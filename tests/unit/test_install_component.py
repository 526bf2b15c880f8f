"""PatroniHostInstall as the engine sees it (Pulumi mocks, no engine, no host): which
pulumi-command resources a host gets, what is secret among their inputs, and that the
program registers no PatroniInstall any more."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pulumi
import pytest

from components.host_install import PLACEHOLDER
from tests.unit.configs import lab_raw

ED = "AAAAC3NzaC1lZDI1NTE5AAAAIPQA+Se1jAR9iwwkpXz2eq/8O+PvwnsXPZTTSjEbepTO"
SECRET_SIG = "4dabf18193072939515e22adb298388d"
PROXY = "http://deploy:s3cret-Pw@10.77.0.1:8888"
KEY_TEXT = "-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-real-key\n-----END OPENSSH PRIVATE KEY-----\n"


class Recorder(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.resources: list[pulumi.runtime.MockResourceArgs] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.resources.append(args)
        outs = dict(args.inputs)
        if args.typ == "command:remote:Command":
            outs["stdout"] = "patroni 4.1.5" if args.name.endswith("-patroni") else ""
        return f"{args.name}-id", outs

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        return {}

    def named(self, prefix: str) -> dict[str, pulumi.runtime.MockResourceArgs]:
        return {r.name: r for r in self.resources if r.name.startswith(prefix)}


@pytest.fixture()
def recorder() -> Iterator[Recorder]:
    mocks = Recorder()
    pulumi.runtime.set_mocks(mocks, preview=False)
    yield mocks


def _is_secret(value: Any) -> bool:
    return isinstance(value, dict) and SECRET_SIG in value


def _files(tmp_path: Path) -> dict[str, str]:
    known = tmp_path / "known_hosts"
    known.write_text("".join(f"10.77.0.1{i},pg{i} ssh-ed25519 {ED}\n" for i in range(1, 6)))
    key = tmp_path / "id_ed25519"
    key.write_text(KEY_TEXT)
    wheels = tmp_path / "wheelhouse"
    wheels.mkdir()
    (wheels / "patroni-4.1.5-py3-none-any.whl").write_bytes(b"wheel")
    return {"knownHostsFile": str(known), "privateKeyFile": str(key), "wheelhouse": str(wheels)}


def _settled(install: Any) -> Any:
    """The install's version once every step of it is registered."""
    steps = pulumi.Output.all(install.patroni_version, install.distro.id, install.unit.id)
    return steps.apply(lambda a: a[0])


def _program(raw: dict[str, Any]) -> Any:
    from components.cluster import PostgresHaCluster
    from components.config import load_cluster_config

    return PostgresHaCluster(load_cluster_config(raw, set()), raw)


def _lab(tmp_path: Path, **install: Any) -> dict[str, Any]:
    files = _files(tmp_path)
    raw = copy.deepcopy(lab_raw())
    raw["ssh"].update(knownHostsFile=files["knownHostsFile"], privateKeyFile=files["privateKeyFile"])
    raw["patroni"]["install"].update(wheelhouse=files["wheelhouse"], **install)
    return raw


@pulumi.runtime.test
def test_a_host_gets_its_steps_under_one_component(recorder: Recorder, tmp_path: Path) -> Any:
    cluster = _program(_lab(tmp_path))

    def check(_: Any) -> None:
        names = recorder.named("pgha-lab-install-pg1")
        assert {n: r.typ for n, r in names.items()} == {
            "pgha-lab-install-pg1": "pgha:index:PatroniHostInstall",
            "pgha-lab-install-pg1-wheelhouse": "command:remote:CopyToRemote",
            "pgha-lab-install-pg1-patroni": "command:remote:Command",
            "pgha-lab-install-pg1-distro": "command:remote:Command",
            "pgha-lab-install-pg1-unit": "command:remote:Command",
            "pgha-lab-install-pg1-cleanup": "pulumi-python:dynamic/pgha:PatroniHostCleanup",
        }
        assert not [r for r in recorder.resources if r.typ.endswith("PatroniInstall")]
        assert "pgha-lab-install-pg4" not in recorder.named("pgha-lab-install-pg4")  # HAProxy only
        patroni = names["pgha-lab-install-pg1-patroni"].inputs
        assert "update" not in patroni and "triggers" not in patroni  # changes re-run create, in place
        for step in ("patroni", "distro", "unit"):  # a dead host stays removable
            assert "delete" not in names[f"pgha-lab-install-pg1-{step}"].inputs, step
        cleanup = names["pgha-lab-install-pg1-cleanup"].inputs
        assert cleanup["script"].startswith("\n# pgha on pg1 (10.77.0.11): the host leaves")
        assert cleanup["connection"]["host"] == "10.77.0.11"
        assert patroni["create"].startswith(
            "sudo -n sh -euc '\n# pgha on pg1 (10.77.0.11): Patroni 4.1.5 in /opt/patroni")
        assert patroni["addPreviousOutputInEnv"] is False
        assert "stdin" not in patroni  # a wheelhouse install has no secret to pass
        connection = patroni["connection"]
        assert _is_secret(connection)
        assert connection["value"]["hostKey"] == f"ssh-ed25519 {ED}"
        assert connection["value"]["privateKey"] == KEY_TEXT
        assert connection["value"]["user"] == "pgha" and connection["value"]["host"] == "10.77.0.11"
        unit = names["pgha-lab-install-pg1-unit"].inputs
        assert unit["stdin"].startswith("# Managed by pgha")  # the unit's text, readable
        assert "ExecStart=/opt/patroni/bin/patroni /etc/patroni/patroni.yml" in unit["stdin"]
        copy_ = names["pgha-lab-install-pg1-wheelhouse"].inputs
        assert copy_["remotePath"] == "pgha-wheelhouse"  # in the SSH user's home
        distro = names["pgha-lab-install-pg1-distro"].inputs["create"]
        assert "postgresql@15-main.service" in distro and "etcd" not in distro

    return _settled(cluster.patroni.installs["pg1"]).apply(check)


@pulumi.runtime.test
def test_index_install_passes_proxy_on_stdin_as_a_secret(recorder: Recorder, tmp_path: Path) -> Any:
    raw = _lab(tmp_path, method="index", proxy=PROXY, indexUrl="http://127.0.0.1:8089/simple/")
    raw["hosts"].append({"name": "pg5", "address": "10.77.0.15", "roles": ["patroni"]})
    cluster = _program(raw)

    def check(version: str) -> None:
        assert version == "4.1.5"
        names = recorder.named("pgha-lab-install-pg5")
        assert set(names) == {"pgha-lab-install-pg5", "pgha-lab-install-pg5-patroni",
                              "pgha-lab-install-pg5-distro", "pgha-lab-install-pg5-unit",
                              "pgha-lab-install-pg5-cleanup"}
        patroni = names["pgha-lab-install-pg5-patroni"].inputs
        assert _is_secret(patroni["stdin"])
        assert patroni["stdin"]["value"] == f"{PROXY}\nhttp://127.0.0.1:8089/simple/\n"
        for r in recorder.resources:
            for key in ("create", "update", "delete"):
                assert "s3cret-Pw" not in str(r.inputs.get(key, "")), (r.name, key)
        assert "disable -q --now etcd.service" in names["pgha-lab-install-pg5-distro"].inputs["create"]

    return _settled(cluster.patroni.installs["pg5"]).apply(check)


def test_a_host_missing_from_known_hosts_is_refused(recorder: Recorder, tmp_path: Path) -> None:
    raw = _lab(tmp_path)
    raw["hosts"].append({"name": "pg9", "address": "10.77.0.19", "roles": ["patroni"]})
    with pytest.raises(pulumi.RunError, match=r"pgha:ssh.knownHostsFile \(.*known_hosts\) has no key for "
                                              r"10\.77\.0\.19: add the host's key"):
        _program(raw)


def test_an_unreadable_key_file_names_its_stack_key(recorder: Recorder, tmp_path: Path) -> None:
    raw = _lab(tmp_path)
    raw["hosts"][1]["ssh"] = {"privateKeyFile": str(tmp_path / "missing")}
    with pytest.raises(pulumi.RunError, match=r"pgha:hosts\[1\].ssh.privateKeyFile: cannot read "):
        _program(raw)


@pulumi.runtime.test
def test_a_preview_without_the_files_still_runs(tmp_path: Path) -> Any:
    """A pull request's CI job has the state and the passphrase, not the key or known_hosts."""
    mocks = Recorder()
    pulumi.runtime.set_mocks(mocks, preview=True)
    raw = copy.deepcopy(lab_raw())
    raw["ssh"].update(knownHostsFile=str(tmp_path / "nope"), privateKeyFile=str(tmp_path / "nokey"))
    raw["patroni"]["install"]["wheelhouse"] = str(tmp_path / "no-wheels")
    cluster = _program(raw)

    def check(_: Any) -> None:
        steps = mocks.named("pgha-lab-install-pg1")
        assert "pgha-lab-install-pg1-patroni" in steps
        # pulumi-command refuses an upload whose source is not a directory, even in a preview:
        # the placeholder stands in, and the stored source is kept (ignore_changes).
        source = steps["pgha-lab-install-pg1-wheelhouse"].inputs["source"]
        assert isinstance(source, pulumi.FileArchive) and source.path == str(PLACEHOLDER), source

    return _settled(cluster.patroni.installs["pg1"]).apply(check)


@pulumi.runtime.test
def test_the_bastion_is_the_connections_proxy(recorder: Recorder, tmp_path: Path) -> Any:
    raw = _lab(tmp_path)
    raw["ssh"]["bastion"] = {"address": "10.77.0.14", "user": "jump"}
    cluster = _program(raw)

    def check(_: Any) -> None:
        connection = recorder.named("pgha-lab-install-pg2-patroni")["pgha-lab-install-pg2-patroni"].inputs[
            "connection"]["value"]
        assert connection["host"] == "10.77.0.12"
        proxy = connection["proxy"]
        assert (proxy["host"], proxy["user"], proxy["port"]) == ("10.77.0.14", "jump", 22)
        assert proxy["hostKey"] == f"ssh-ed25519 {ED}" and proxy["privateKey"] == KEY_TEXT

    return _settled(cluster.patroni.installs["pg2"]).apply(check)
