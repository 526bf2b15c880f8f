"""HAProxyConfig: haproxy.cfg on one balancer host.

The new file is checked with `haproxy -c` before it replaces the old one and
HAProxy is reloaded (not restarted: open sessions survive). A create or
update returns once HAProxy's own checks see exactly one primary.
"""

from __future__ import annotations

import csv
import io
from typing import Any, ClassVar

from pulumi.dynamic import CreateResult, ReadResult, UpdateResult

from components import render, state_upgrade
from components.providers.base import HostProvider, public
from components.transport.ssh import Ssh, SshError, enable_unit, notify, wait_for

CONFIG = "/etc/haproxy/haproxy.cfg"
ORIGINAL = "/etc/haproxy/haproxy.cfg.pgha-orig"
MARKER = "# Managed by pgha"  # the first line of pgha's haproxy.cfg (templates/haproxy.cfg.j2)


def backend_status(address: str, stats_port: int) -> dict[str, dict[str, str]]:
    """{proxy: {server: status}} from HAProxy's CSV stats page."""
    import requests  # on use: see transport/rest.py

    resp = requests.get(f"http://{address}:{stats_port}/;csv", timeout=(3, 5))
    resp.raise_for_status()
    rows = csv.DictReader(io.StringIO(resp.text.lstrip("# ")))
    table: dict[str, dict[str, str]] = {}
    for row in rows:
        if row.get("svname") in ("FRONTEND", "BACKEND"):
            continue
        table.setdefault(row["pxname"], {})[row["svname"]] = row["status"]
    return table


def primaries_up(props: dict[str, Any]) -> list[str]:
    status = backend_status(props["connection"]["host"], props["stats_port"])
    return [name for name, state in status.get(f"{props['scope']}_primary", {}).items() if state == "UP"]


class HAProxyConfigProvider(HostProvider):
    OBSERVED: ClassVar[dict[str, Any]] = {"config_matches": True, "running": True}
    OUTPUTS = frozenset({"primary_at_apply"})

    def upgrade(self, props: dict[str, Any]) -> dict[str, Any]:
        return state_upgrade.haproxy_config(props)

    def apply_config(self, ssh: Ssh, props: dict[str, Any]) -> None:
        """Write haproxy.cfg (checked with `haproxy -c` first) and start or reload HAProxy if it changed."""
        text = render.haproxy_cfg(props)
        ssh.run(f"[ -f {ORIGINAL} ] || cp -p {CONFIG} {ORIGINAL}", step="keep the original haproxy.cfg")
        candidate = f"{CONFIG}.pgha-new"
        ssh.write_file(candidate, text, step="write the new haproxy.cfg")
        check = ssh.run(f"haproxy -c -q -f {candidate}", step="check haproxy.cfg", check=False)
        if check.code != 0:
            ssh.run(f"rm -f {candidate}", step="discard the rejected haproxy.cfg")
            raise SshError(props["connection"]["host"], "check haproxy.cfg (haproxy -c)",
                           (check.stderr or check.stdout).strip()[-1500:])
        changed = ssh.run(f"if cmp -s {candidate} {CONFIG}; then rm -f {candidate}; echo same; "
                          f"else mv -f {candidate} {CONFIG}; echo changed; fi",
                          step="install haproxy.cfg").stdout.strip() == "changed"
        active = ssh.run("systemctl is-active haproxy", step="check haproxy", check=False).stdout.strip()
        if active != "active":
            ssh.run(f"{enable_unit('haproxy')}; systemctl restart haproxy",
                    step="start haproxy")
        elif changed:
            ssh.run("systemctl reload haproxy", step="reload haproxy")
        else:
            ssh.run(enable_unit("haproxy"), step="enable haproxy")

    def _wait_primary(self, props: dict[str, Any]) -> list[str]:
        return wait_for(lambda: (lambda up: up if len(up) == 1 else None)(primaries_up(props)),
                        timeout=120, interval=0.5, what="HAProxy's checks seeing exactly one primary",
                        host=props["connection"]["host"])

    def _outs(self, props: dict[str, Any], primary: list[str]) -> dict[str, Any]:
        return {**public(props), "config_matches": True, "running": True, "primary_at_apply": primary[0]}

    def create(self, props: dict[str, Any]) -> CreateResult:
        with self.ssh(props) as ssh:
            self.apply_config(ssh, props)
        primary = self._wait_primary(props)
        return CreateResult(id_=f"{props['scope']}/{props['connection']['host']}/haproxy",
                            outs=self._outs(props, primary))

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        with self.ssh(news) as ssh:
            self.apply_config(ssh, news)
        return UpdateResult(outs=self._outs(news, self._wait_primary(news)))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        """Refresh: a hand-edited haproxy.cfg or a stopped HAProxy shows as drift; so does a host
        whose haproxy.cfg is no longer pgha's (re-imaged), or that cannot be reached."""
        outs = dict(props)
        host = props["connection"]["host"]
        try:
            with self.ssh(props, connect_timeout=10) as ssh:
                text = ssh.run(f"cat {CONFIG}", step="read haproxy.cfg", check=False).stdout
                outs["config_matches"] = text == render.haproxy_cfg(self.upgrade(props))
                active = ssh.run("systemctl is-active haproxy", step="check haproxy", check=False)
                outs["running"] = active.stdout.strip() == "active"
                if not text.startswith(MARKER):
                    notify(host, f"{CONFIG} is not pgha's (the distro's, or edited by hand)", warning=True)
        except SshError as err:
            outs["running"] = False
            notify(host, f"HAProxy: the host is unreachable ({err})", warning=True)
        return ReadResult(id_=id_, outs=outs)

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        """Stop balancing first in a destroy; the distro's original config comes back. A host
        whose HAProxy pgha no longer configures (re-imaged) is left alone; an unreachable one
        is skipped. Either is said."""
        host = props["connection"]["host"]
        try:
            with self.ssh(props, connect_timeout=10) as ssh:
                ours = ssh.run(f"[ -f {ORIGINAL} ] || head -n 1 {CONFIG} 2>/dev/null | grep -q '^{MARKER}' "
                               f"&& echo yes || echo no", step="check haproxy.cfg", check=False)
                if ours.stdout.strip() != "yes":
                    notify(host, f"{CONFIG} is not pgha's (re-imaged host?): HAProxy left as it is",
                           warning=True)
                    return
                ssh.run("systemctl disable --now haproxy >/dev/null 2>&1 || true; "
                        f"if [ -f {ORIGINAL} ]; then mv -f {ORIGINAL} {CONFIG}; fi",
                        step="stop haproxy and restore its original config")
        except SshError as err:
            if err.step != "connect over SSH":
                raise
            notify(host, f"unreachable ({err}): skipped stopping HAProxy and restoring its original config",
                   warning=True)
