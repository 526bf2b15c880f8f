"""TlsFiles: the certificate files one service reads on one host (pgha:tls).

The PEMs travel over SSH on stdin (never on a command line), each file written atomically with
its mode and owner (keys 0600, owned by the service user), in a 0700 directory of that user.
The component orders it before the service that reads the files: etcd's before its member
starts, Patroni's before Patroni starts, HAProxy's before its config is checked and reloaded.

A refresh reads the files back (their SHA-256, mode and owner): a file changed or removed on
the host shows as drift, and the next `up` writes it again. An update (a renewed certificate,
a rotated CA) rewrites what changed and has the running service read it: etcd reads its
certificate files at every new TLS handshake (nothing to do), Patroni re-reads its REST
certificate and PostgreSQL its ssl files on a reload, HAProxy on a reload.
"""

from __future__ import annotations

import hashlib
import shlex
from typing import Any, ClassVar

from pulumi.dynamic import CreateResult, ReadResult, UpdateResult

from components import tls
from components.providers.base import HostProvider, public
from components.transport.ssh import Ssh, SshError, notify, wait_for
from components.transport.tls_client import served_certificate

# What has the running service read changed files (only when it runs; a stopped one reads
# them when it starts). etcd reads them at every handshake; Patroni, on SIGHUP, sets up its
# REST API again when its certificate changed and reloads PostgreSQL (Patroni 4's
# reload_config(sighup=True)).
RELOAD = {
    "etcd": "",
    "patroni": "if systemctl is-active -q patroni; then systemctl reload patroni; fi",
    "haproxy": "if systemctl is-active -q haproxy; then systemctl reload haproxy; fi",
    "pgbackrest": "",  # the backup script's curl reads them at each run
}


def _layout(props: dict[str, Any]) -> dict[str, str]:
    """{path: "<mode> <owner>:<group>"}"""
    return dict(props["layout"])


def expected_stat(props: dict[str, Any]) -> dict[str, str]:
    """{path: "<sha256> <mode>:<owner>:<group>"} as READ_BACK prints it for the wanted files."""
    out = {}
    for path, how in _layout(props).items():
        mode, _, owner = how.partition(" ")
        digest = hashlib.sha256(str(props["contents"][path]).encode()).hexdigest()
        out[path] = f"{digest} {int(mode, 8):o}:{owner}"
    return out


def read_back_script(paths: list[str]) -> str:
    quoted = " ".join(shlex.quote(p) for p in paths)
    return (f"for f in {quoted}; do if [ -f \"$f\" ]; then "
            "echo \"$f $(sha256sum < \"$f\" | cut -d' ' -f1) $(stat -c %a:%U:%G \"$f\")\"; "
            "else echo \"$f missing\"; fi; done")


def parse_read_back(output: str) -> dict[str, str]:
    found = {}
    for line in output.splitlines():
        path, _, rest = line.partition(" ")
        if path:
            found[path] = rest.strip()
    return found


def drift_of(props: dict[str, Any], found: dict[str, str]) -> str:
    """What differs on the host, in words ('' when every file is as written)."""
    problems = []
    for path, want in expected_stat(props).items():
        have = found.get(path, "missing")
        if have == "missing":
            problems.append(f"{path} is missing")
        elif have != want:
            digest, _, stat = have.partition(" ")
            problems.append(f"{path} was changed on the host" if digest != want.split(" ")[0]
                            else f"{path} is {stat}, not {want.split(' ')[1]}")
    return "; ".join(problems)


class TlsFilesProvider(HostProvider):
    OBSERVED: ClassVar[dict[str, Any]] = {"in_place": True}
    OUTPUTS = frozenset({"drift"})

    def _write(self, ssh: Ssh, props: dict[str, Any]) -> bool:
        directory, owner = props.get("directory") or "", props["owner"]
        if directory:
            ssh.run(f"install -d -m 0700 -o {shlex.quote(owner)} -g {shlex.quote(owner)} "
                    f"{shlex.quote(directory)}", step=f"make {directory}")
        changed = False
        for path, how in sorted(_layout(props).items()):
            mode, _, user = how.partition(" ")
            uname, _, group = user.partition(":")
            changed |= ssh.write_file(path, str(props["contents"][path]), mode=mode, owner=uname,
                                      group=group, step=f"write {path}")
        return changed

    def _outs(self, props: dict[str, Any]) -> dict[str, Any]:
        return {**public(props), "in_place": True, "drift": ""}

    def create(self, props: dict[str, Any]) -> CreateResult:
        with self.ssh(props) as ssh:
            self._write(ssh, props)
        host = props["connection"]["host"]
        return CreateResult(id_=f"{host}/{props['service']}-tls", outs=self._outs(props))

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        with self.ssh(news) as ssh:
            stale = sorted(set(_layout(olds)) - set(_layout(news)))
            if stale:
                ssh.run("rm -f " + " ".join(shlex.quote(p) for p in stale),
                        step="remove files no longer used")
            changed = self._write(ssh, news)
            reload = RELOAD.get(news["service"], "")
            if changed and reload:
                running = ssh.run(f"systemctl is-active -q {news['service']} && echo yes || echo no",
                                  step=f"check {news['service']}", check=False).stdout.strip() == "yes"
                ssh.run(reload, step=f"reload {news['service']} for its new certificate files")
                notify(news["connection"]["host"], f"{news['service']}: certificate files replaced, reloaded")
                if running and news.get("rest_endpoint"):
                    self._wait_served(news)
        return UpdateResult(outs=self._outs(news))

    def same(self, key: str, old: Any, new: Any) -> bool:
        # `rest_endpoint` came with the CA rotation's ordering: a state without it is no change.
        return (key == "rest_endpoint" and old is None) or super().same(key, old, new)

    @staticmethod
    def _wait_served(props: dict[str, Any]) -> None:
        """Until Patroni's REST API serves the new certificate: Patroni applies a reload at its
        next HA loop (within loop_wait), and only then trusts the CA bundle beside it for client
        certificates. Whoever shows a new client certificate next (HAProxy's checks, the
        repository host, pgha) waits for this."""
        served_pems = [str(pem) for pem in props["contents"].values() if "BEGIN CERTIFICATE" in str(pem)
                       and not tls.inspect(str(pem)).is_ca]
        if not served_pems:
            return
        want = tls.fingerprint(served_pems[0])
        address, _, port = str(props["rest_endpoint"]).rpartition(":")

        def serving() -> bool:
            served = served_certificate(address, int(port))
            return served is not None and tls.fingerprint(served) == want

        wait_for(serving, timeout=90, interval=0.5, host=props["connection"]["host"],
                 what="Patroni's REST API serving its new certificate (Patroni applies a reload at its "
                      "next HA loop)")

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        outs = dict(props)
        try:
            with self.ssh(props, connect_timeout=10) as ssh:
                out = ssh.run(read_back_script(sorted(_layout(props))),
                              step="read the certificate files back", check=False)
            drift = drift_of(props, parse_read_back(out.stdout))
        except SshError as err:
            drift = f"the host is unreachable ({err})"
        outs.update(in_place=not drift, drift=drift)
        if drift:
            notify(props["connection"]["host"], f"{props['service']} certificate files: {drift}",
                   warning=True)
        return ReadResult(id_=id_, outs=outs)

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        """Remove the files (the service that read them is deleted first); an unreachable host
        is skipped and said."""
        paths = " ".join(shlex.quote(p) for p in sorted(_layout(props)))
        directory = props.get("directory") or ""
        script = f"rm -f {paths}"
        if directory:
            script += f"; rmdir {shlex.quote(directory)} 2>/dev/null || true"
        try:
            with self.ssh(props, connect_timeout=10) as ssh:
                ssh.run(script, step="remove the certificate files")
        except SshError as err:
            if err.step != "connect over SSH":
                raise
            notify(props["connection"]["host"], f"unreachable ({err}): skipped removing the "
                   f"{props['service']} certificate files", warning=True)
