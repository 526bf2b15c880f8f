"""PatroniHostInstall: a host made ready for Patroni, the runbook's first steps, as
pulumi-command resources (the scripts are in install_steps.py).

Per host, under one component `<scope>-install-<host>`:

  -wheelhouse    remote.CopyToRemote  the wheelhouse directory, uploaded into the SSH user's
                                      ~/pgha-wheelhouse (wheelhouse installs only)
  -patroni       remote.Command       the virtualenv and Patroni, installed with uv from the
                                      wheelhouse when it holds uv's wheel, else with pip (at low
                                      CPU priority); its version checked
  -distro        remote.Command       the distro's PostgreSQL 15/main stopped and masked, the
                                      distro's etcd stopped on hosts that are no etcd member
  -unit          remote.Command       the config directory and the systemd unit
  -cleanup       PatroniHostCleanup   nothing until deleted: then removes the unit, the virtualenv
                                      and the upload (a dynamic resource: it skips a dead host)

The first host's install comes first; every step of the other hosts waits for its Patroni
install (components/patroni.py says why). These are steps, not state to watch: nothing here
is read back by `refresh` (the running Patroni is, by its PatroniNode). Each script converges
when run again. An input change runs `create` again, in place: only `triggers` would replace a
pulumi-command resource, and none are set, because a replacement runs the old resource's
`delete` (removing the unit or the virtualenv) after the new one's `create`. An index install
through a proxy checks the proxy first, before anything changes on the host: there the other
steps wait for the install.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
from pulumi_command import remote

from components import install_steps as steps
from components.command_connection import FileReader
from components.install_steps import InstallPlan
from components.resources import PatroniHostCleanup


@dataclass(frozen=True)
class PatroniHostInstallArgs:
    plan: InstallPlan
    scope: str
    connection: remote.ConnectionArgs  # pulumi-command's
    host_connection: dict[str, Any]  # the dynamic providers' (specs.connection), for the cleanup
    unit: str  # the systemd unit's text (render.patroni_unit)
    ssh_private_key: pulumi.Output[str] | None = None  # the secret pgha:sshPrivateKey, if set
    # The wheelhouse to upload (wheelhouse installs).
    wheelhouse: Wheelhouse | None = None
    # What every step waits for (a refused membership change stops before any host is touched;
    # the first host's install comes before the others').
    depends_on: Sequence[pulumi.Resource] = ()
    # False in a preview that cannot read known_hosts: the host key is unknown there.
    host_key_known: bool = True


# What a preview without the wheelhouse shows instead (see its README).
PLACEHOLDER = Path(__file__).resolve().parent / "placeholders" / "no-wheelhouse"


@dataclass(frozen=True)
class Wheelhouse:
    """The upload's source: the wheelhouse directory as an archive (the engine hashes its files:
    new wheels upload again), or, in a preview on a machine without it, the placeholder, with
    the stored source kept (`ignore_changes`)."""

    archive: pulumi.Archive
    available: bool


def wheelhouse_archive(path: str, reader: FileReader) -> Wheelhouse:
    if reader.directory(path, "pgha:patroni.install.wheelhouse", "the wheelhouse"):
        return Wheelhouse(pulumi.FileArchive(path), True)
    return Wheelhouse(pulumi.FileArchive(str(PLACEHOLDER)), False)


def _version(stdout: str | None) -> str:
    """The version the install printed last ("patroni 4.1.5")."""
    last = (stdout or "").strip().splitlines()[-1:]
    return last[0].split()[-1] if last and last[0].startswith("patroni ") else ""


class PatroniHostInstall(pulumi.ComponentResource):
    patroni_version: pulumi.Output[str]

    def __init__(self, name: str, args: PatroniHostInstallArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("pgha:index:PatroniHostInstall", name, None, opts)
        plan, conn = args.plan, args.connection

        def command(step: str, script: str, stdin: pulumi.Input[str] | None = None,
                    after: list[pulumi.Resource] | None = None) -> remote.Command:
            # No `update`: on an input change pulumi-command runs `create` again. No `delete`:
            # the cleanup below removes the install, and survives a dead host.
            return remote.Command(
                f"{name}-{step}", connection=conn, create=steps.as_root(script, plan.ssh_user), stdin=stdin,
                add_previous_output_in_env=False,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[*args.depends_on, *(after or [])]))

        before_install: list[pulumi.Resource] = []
        if plan.method == "wheelhouse":
            # A relative path: the SSH user's home, which it may write without a root step first.
            assert args.wheelhouse is not None
            # An upload runs again only when its files change, not when the host does: a host
            # re-imaged under the stack (a new host key in known_hosts) gets it anew. It has no
            # `delete`, so that replacement removes nothing.
            self.wheelhouse = remote.CopyToRemote(
                f"{name}-wheelhouse", connection=conn, source=args.wheelhouse.archive,
                remote_path=steps.UPLOAD_DIR, triggers=[conn.host_key],
                opts=pulumi.ResourceOptions(
                    parent=self, depends_on=list(args.depends_on),
                    # What this machine cannot read (a pull request's preview) is no change.
                    ignore_changes=[*([] if args.wheelhouse.available else ["source"]),
                                    *([] if args.host_key_known else ["triggers"])]))
            before_install = [self.wheelhouse]
        secret_stdin = steps.install_stdin(plan)
        self.patroni = command(
            "patroni", steps.patroni_script(plan),
            stdin=pulumi.Output.secret(secret_stdin) if secret_stdin is not None else None,
            after=before_install)
        # A proxy's preflight comes before any change on the host; a wheelhouse install has
        # nothing to check, and the steps overlap.
        first = [self.patroni] if plan.method == "index" else []
        self.distro = command("distro", steps.distro_script(plan), after=first)
        self.unit = command("unit", steps.unit_script(plan), stdin=args.unit, after=first)
        cleanup: dict[str, Any] = {"scope": args.scope, "connection": args.host_connection,
                                   "script": steps.cleanup_script(plan)}
        if args.ssh_private_key is not None:
            cleanup["ssh_private_key"] = args.ssh_private_key
        # Deleted after the host's PatroniNode (which depends on this whole component).
        self.cleanup = PatroniHostCleanup(
            f"{name}-cleanup", cleanup, pulumi.ResourceOptions(parent=self, depends_on=list(args.depends_on)))

        self.patroni_version = self.patroni.stdout.apply(_version)
        self.register_outputs({"patroni_version": self.patroni_version})
