"""pgha deployed on fresh lab hosts, and how the benchmarks talk to it.

A deployment is the real program copied beside a stack file (tests/cluster's ProjectCopy, with
an isolated file backend and the lab passphrase), applied with the pinned `pulumi`. Deploying
takes minutes, so the session keeps the current one and hands it to the next benchmark when the
host layout is the same and the cluster is healthy; any other layout means a fresh lab.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import requests

from bench.events import EventTail, spans
from bench.recorder import WriteRecorder
from bench.timing import log, timed
from components.config import ClusterConfig, load_cluster_config
from components.specs import RESTAPI_USERNAME
from components.transport import tls_client
from components.transport.rest import LEADER_ROLES, PatroniApi
from components.transport.tls_client import TlsClientFiles
from lab import Lab
from scripts.lab_stack import link_wheelhouse
from tests.cluster.conftest import ProjectCopy, host, lab_stack_config, wait_until

STACK = "bench"
LAB_SUBNET = "10.77.0.0/24"


def lab_base_config() -> dict[str, Any]:
    """The lab stack's config without the `pgha:` prefix (what ProjectCopy.base_config holds:
    TLS off unless a benchmark turns it on)."""
    return lab_stack_config()


def cluster_config(config: dict[str, Any]) -> ClusterConfig:
    """The validated model with pgha's defaults filled in (HAProxy checks, paths, users)."""
    return load_cluster_config(copy.deepcopy(config), set())


def _revealed(value: Any) -> Any:
    """A value from `stack export --show-secrets` with its secret envelopes (whose plaintext is
    JSON) opened, nested ones too."""
    if isinstance(value, dict) and "plaintext" in value:
        return _revealed(json.loads(value["plaintext"]))
    if isinstance(value, dict):
        return {k: _revealed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_revealed(v) for v in value]
    return value


def _plaintext(value: Any) -> str:
    """A secret from `stack export --show-secrets` as text."""
    return str(_revealed(value))


def tls_client_material(exported: dict[str, Any]) -> dict[str, str]:
    """pgha's own TLS client identity ({ca_pem, cert_pem, key_pem}: the cluster CA and the
    pgha-client certificate) from a `stack export --show-secrets`: the `tls_client` input every
    resource that calls etcd or Patroni carries (components/certificates.py)."""
    for res in exported["deployment"].get("resources", []):
        for part in ("outputs", "inputs"):
            material = _revealed((res.get(part) or {}).get("tls_client"))
            if isinstance(material, dict) and {"ca_pem", "cert_pem", "key_pem"} <= set(material):
                return {k: str(material[k]) for k in ("ca_pem", "cert_pem", "key_pem")}
    raise RuntimeError("no resource with a tls_client in the stack state (is pgha:tls on?)")


def rest_base(cfg: ClusterConfig, address: str) -> str:
    """A node's Patroni REST API: https with pgha:tls on, http otherwise."""
    return f"{'https' if cfg.tls.enabled else 'http'}://{address}:{cfg.patroni.restapi_port}"


def libpq_tls(cfg: ClusterConfig, ca_file: str | None) -> dict[str, str]:
    """A client's TLS settings for PostgreSQL through HAProxy: with pgha:tls on, what the README
    tells clients to use (verify-full against the stack's CA); off, libpq's defaults (as before)."""
    if not cfg.tls.enabled:
        return {}
    if ca_file is None:
        raise ValueError("pgha:tls is on: the stack's CA file is needed for sslmode=verify-full")
    return {"sslmode": "verify-full", "sslrootcert": ca_file}


class TlsPatroniApi(PatroniApi):
    """PatroniApi presenting pgha's client identity (verifying against the cluster CA) on every
    call, from whichever thread makes it (tls_client's context does not follow threads)."""

    def __init__(self, base_url: str, auth: tuple[str, str] | None, timeout: tuple[float, float],
                 identity: TlsClientFiles | None) -> None:
        super().__init__(base_url, auth=auth, timeout=timeout)
        self.identity = identity

    def _presenting(self) -> Any:
        return tls_client.presenting(self.identity) if self.identity else nullcontext()

    def _get(self, path: str) -> requests.Response:
        with self._presenting():
            return super()._get(path)

    def _unsafe(self, method: str, path: str, body: dict[str, Any] | None = None,
                timeout: tuple[float, float] | None = None) -> requests.Response:
        with self._presenting():
            return super()._unsafe(method, path, body, timeout)


@dataclass(frozen=True)
class Layout:
    """Which lab hosts boot and which of them the stack names, with which roles."""

    key: str
    lab_hosts: int
    hosts: tuple[tuple[str, tuple[str, ...]], ...]
    # Lets a bare host pg_basebackup from the leader before it joins (B3's floor); lab only.
    replication_from_lab_subnet: bool = False
    # Top-level stack settings (without `pgha:`) on top of the lab's, e.g. ("backup", {...}).
    settings: tuple[tuple[str, Any], ...] = ()

    def config(self, base: dict[str, Any]) -> dict[str, Any]:
        config = copy.deepcopy(base)
        config["hosts"] = [host(name, list(roles)) for name, roles in self.hosts]
        config.update(copy.deepcopy(dict(self.settings)))
        if self.replication_from_lab_subnet:
            user = cluster_config(config).postgresql.replication_user
            config["pgHba"] = [*config.get("pgHba", []),
                               f"host replication {user} {LAB_SUBNET} scram-sha-256"]
        return config


_EP = ("etcd", "patroni")
STANDARD = Layout("3 nodes", 4, (("pg1", _EP), ("pg2", _EP), ("pg3", _EP), ("pg4", ("haproxy",))))
NINE = Layout("9 nodes", 10, (("pg1", _EP), ("pg2", _EP), ("pg3", _EP),
                              *((f"pg{i}", ("patroni",)) for i in range(4, 10)),
                              ("pg10", ("haproxy",))))
# B8: the same hosts and roles with pgha:tls on (the lab stack says off).
STANDARD_TLS = Layout("3 nodes, TLS on", 4, STANDARD.hosts, settings=(("tls", {"enabled": True}),))
# pg5 and pg6 boot bare: B3 adds them to the stack one at a time.
GROW = Layout("3 nodes + 2 bare hosts", 6, STANDARD.hosts, replication_from_lab_subnet=True)
# B6 and B7: pg5 is the repository host (archiving from the first up, archive_timeout 10 s so
# that B7 sees it bound the lag); pg6 boots bare for B6's floor, pg7 for its clone, pg8 for a
# second clone (restored to a time) should the first one fail.
ARCHIVE_TIMEOUT = "10s"
BACKUP = Layout("3 nodes + repository host + 3 bare hosts", 8,
                (*STANDARD.hosts, ("pg5", ("backup",))),
                settings=(("backup", {"archiveTimeout": ARCHIVE_TIMEOUT, "processMax": 2}),))


def run_checked(argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 1800,
                what: str) -> subprocess.CompletedProcess[str]:
    """subprocess.run that fails with the command's stderr in the message."""
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}): {proc.stderr.strip()[-1500:]}")
    return proc


def ssh_checked(lab: Lab, name: str, cmd: str, *, timeout: float = 900,
                input: str | None = None, what: str) -> subprocess.CompletedProcess[str]:
    """lab.ssh that fails with the host, the step and the remote stderr in the message."""
    proc = lab.ssh(name, cmd, check=False, timeout=timeout, input=input)
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: {what} failed ({proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()[-1500:]}")
    return proc


def resources_summary(stdout: str) -> str:
    """The `Resources:` block of a preview or up (e.g. "31 unchanged"), to prove no change."""
    lines = stdout.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Resources:")
    except StopIteration:
        return ""
    block = []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        block.append(line.strip())
    return "; ".join(block)


@dataclass
class Deployment:
    """One applied stack on one lab, with cached secrets and REST/SQL access."""

    lab: Lab
    project: ProjectCopy
    layout: Layout
    config: dict[str, Any]
    up_seconds: float
    # {resource: (start s, end s)} of that `up` (bench/events.py)
    up_spans: dict[str, tuple[float, float]] = field(default_factory=dict)
    _secrets: dict[str, str] = field(default_factory=dict)
    _tls_files: TlsClientFiles | None = None

    # -- the stack ----------------------------------------------------------------------

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.project.run(*args, check=check)

    def write(self, config: dict[str, Any]) -> None:
        self.config = config
        self.project.write_config(config)

    def up(self) -> tuple[float, str]:
        """`pulumi up` of the current stack file: (seconds, the Resources summary)."""
        proc, seconds = timed(lambda: self.run("up", "--yes", "--skip-preview"))
        return seconds, resources_summary(proc.stdout)

    def export(self, show_secrets: bool = False) -> dict[str, Any]:
        args = ["stack", "export", *(["--show-secrets"] if show_secrets else [])]
        return json.loads(self.run(*args).stdout)

    def resource_count(self) -> int:
        return len(self.export()["deployment"]["resources"])

    def generated_password(self, purpose: str) -> str:
        """A password pgha generated into the state (lab stacks), by purpose (restapi, replication)."""
        if purpose not in self._secrets:
            for res in self.export(show_secrets=True)["deployment"]["resources"]:
                if res["type"].endswith("pgha:GeneratedPassword") and res.get("id") == f"password/{purpose}":
                    self._secrets[purpose] = _plaintext(res["outputs"]["value"])
                    break
            else:
                raise RuntimeError(f"no GeneratedPassword password/{purpose} in the stack state")
        return self._secrets[purpose]

    def tls_files(self) -> TlsClientFiles | None:
        """pgha's client identity as files (0600 in a 0700 directory beside the project copy,
        removed with the session's scratch directory); None with pgha:tls off."""
        if not self.model().tls.enabled:
            return None
        if self._tls_files is None:
            directory = self.project.dir.parent / "tls-client"
            directory.mkdir(mode=0o700, exist_ok=True)
            material = tls_client_material(self.export(show_secrets=True))
            self._tls_files = tls_client.write_files(str(directory), material)
        return self._tls_files

    def ca_file(self) -> str | None:
        files = self.tls_files()
        return files.ca_file if files else None

    def superuser_password(self) -> str:
        if "superuser" not in self._secrets:
            self._secrets["superuser"] = self.run(
                "stack", "output", "superuserPassword", "--show-secrets").stdout.strip()
        return self._secrets["superuser"]

    # -- the cluster --------------------------------------------------------------------

    def model(self) -> ClusterConfig:
        return cluster_config(self.config)

    def haproxy(self) -> tuple[str, int]:
        """Address and primary port of the (first) HAProxy host."""
        cfg = self.model()
        return cfg.with_role("haproxy")[0].address, cfg.haproxy.primary_port

    def nodes(self) -> dict[str, str]:
        """Patroni hosts in the stack: name -> address."""
        return {h.name: h.address for h in self.model().with_role("patroni")}

    def api(self, name: str) -> PatroniApi:
        return TlsPatroniApi(rest_base(self.model(), self.nodes()[name]),
                             auth=(RESTAPI_USERNAME, self.generated_password("restapi")),
                             timeout=(2.0, 10.0), identity=self.tls_files())

    def rest_probe(self, name: str, path: str, timeout: float = 2.0) -> Callable[[], bool]:
        """Whether GET path on `name`'s REST API answers 200, as HAProxy's check asks it (no client
        certificate; with pgha:tls on, the server verified against the cluster CA). The URL is
        worked out once: a watcher calls the probe every 50 ms."""
        url, verify = f"{rest_base(self.model(), self.nodes()[name])}{path}", self.ca_file() or True
        return lambda: request_ok(url, timeout, verify=verify)

    def libpq_tls(self) -> dict[str, str]:
        return libpq_tls(self.model(), self.ca_file())

    def recorder(self) -> WriteRecorder:
        """A write recorder through HAProxy's primary port, its table ready (not started)."""
        address, port = self.haproxy()
        return WriteRecorder(address, port, self.superuser_password(), tls=self.libpq_tls()).prepare()

    def members(self, avoid: str | None = None) -> dict[str, dict[str, Any]]:
        """Patroni's /cluster by member name, asked of each node in turn (`avoid` last)."""
        names = sorted(self.nodes(), key=lambda n: (n == avoid, n))
        last: Exception | None = None
        for name in names:
            try:
                return {m["name"]: m for m in self.api(name).cluster().get("members", [])}
            except Exception as err:  # noqa: BLE001 - try the next node
                last = err
        raise RuntimeError(f"no node answers /cluster: {last}")

    def leader(self, avoid: str | None = None) -> str | None:
        return next((n for n, m in self.members(avoid).items() if m.get("role") in LEADER_ROLES), None)

    def healthy(self) -> bool:
        """Every stack node listed, one running leader, the others streaming."""
        try:
            members = self.members()
        except RuntimeError:
            return False
        if set(members) != set(self.nodes()):
            return False
        leaders = [m for m in members.values() if m.get("role") in LEADER_ROLES]
        return (len(leaders) == 1 and leaders[0].get("state") == "running"
                and all(m.get("state") == "streaming" for m in members.values()
                        if m.get("role") not in LEADER_ROLES))

    def wait_healthy(self, timeout: float = 300) -> None:
        wait_until(self.healthy, timeout=timeout, what="every node running or streaming", interval=1.0)

    def wait_caught_up(self, timeout: float = 120) -> bool:
        """Until every replica reports lag 0 (so a floor does not race WAL replay); False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                members = self.members()
                replicas = [m for m in members.values() if m.get("role") not in LEADER_ROLES]
                if all(m.get("lag", 0) in (0, "0") for m in replicas):
                    return True
            except RuntimeError:
                pass
            time.sleep(1)
        return False

    def sql(self, query: str) -> list[tuple[Any, ...]]:
        """One statement through HAProxy's primary port, as the superuser."""
        address, port = self.haproxy()
        with psycopg.connect(host=address, port=port, user="postgres", dbname="postgres",
                             password=self.superuser_password(), connect_timeout=5, autocommit=True,
                             **self.libpq_tls()) as conn:
            cur = conn.execute(query)
            return cur.fetchall() if cur.description else []

    def pgbench_init(self, scale: int) -> str:
        """`pgbench -i -s scale` through HAProxy from the build machine, else on the leader."""
        address, port = self.haproxy()
        if shutil.which("pgbench"):
            env = {**os.environ, "PGPASSWORD": self.superuser_password()}
            run_checked(["pgbench", "-i", "-q", "-s", str(scale), "-h", address, "-p", str(port),
                         "-U", "postgres", "postgres"], env=env, timeout=3600, what=f"pgbench -i -s {scale}")
            return f"build machine -> {address}:{port}"
        leader = self.leader()
        if leader is None:
            raise RuntimeError("no leader to run pgbench on")
        pg = self.model().postgresql
        ssh_checked(self.lab, leader, f"cd /tmp && sudo -u postgres {pg.bin_dir}/pgbench -i -q -s {scale} "
                    f"-h /var/run/postgresql -p {pg.port} postgres", timeout=3600,
                    what=f"pgbench -i -s {scale}")
        return f"on {leader} (no pgbench on the build machine)"

    def pgbench_run(self, clients: int, seconds: int, script: str | None = None,
                    rate: int | None = None) -> str:
        """`pgbench -c clients -T seconds` through HAProxy (the default TPC-B-like script, or
        `script`'s SQL; `rate`: transactions per second in all, -R) and its output, from the
        build machine, else on the leader. The default script needs pgbench_init's tables."""
        address, port = self.haproxy()
        args = [f"-c{clients}", f"-j{min(clients, 4)}", f"-T{seconds}", "-n",
                *([f"-R{rate}"] if rate else [])]
        if shutil.which("pgbench"):
            env = {**os.environ, "PGPASSWORD": self.superuser_password()}
            with tempfile.NamedTemporaryFile("w", suffix=".sql") as sql:
                sql.write(script or "")
                sql.flush()
                return run_checked(["pgbench", *args, *(["-f", sql.name] if script else []), "-h", address,
                                    "-p", str(port), "-U", "postgres", "postgres"], env=env,
                                   timeout=seconds + 600, what="pgbench").stdout
        leader = self.leader()
        if leader is None:
            raise RuntimeError("no leader to run pgbench on")
        pg = self.model().postgresql
        path = "/tmp/pgha-bench-script.sql"
        if script:
            ssh_checked(self.lab, leader, f"cat > {path} && chmod 644 {path}", input=script,
                        what="pgbench script")
        return ssh_checked(self.lab, leader, f"cd /tmp && sudo -u postgres {pg.bin_dir}/pgbench "
                           f"{' '.join(args)} {f'-f {path} ' if script else ''}-h /var/run/postgresql "
                           f"-p {pg.port} postgres", timeout=seconds + 600, what="pgbench").stdout


class Session:
    """The benchmark run's scratch directory and its current deployment (at most one lab)."""

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="pgha-bench-"))
        self.current: Deployment | None = None
        self._serial = 0

    def scratch(self, name: str) -> Path:
        self._serial += 1
        return self.workdir / f"{self._serial:02d}-{name}"

    def fresh_lab(self, hosts: int) -> Lab:
        """Boot `hosts` fresh lab hosts (Lab.up removes whatever lab was there: ours)."""
        self.current = None
        log(f"lab: booting {hosts} fresh hosts")
        lab = Lab.up(hosts)
        link_wheelhouse(lab)
        return lab

    def deploy(self, layout: Layout) -> Deployment:
        """Fresh hosts, then `pulumi up` of the layout's stack (timed: B1 reports it)."""
        lab = self.fresh_lab(layout.lab_hosts)
        project = ProjectCopy.with_stack(self.scratch("deploy"), STACK)
        config = layout.config(project.base_config)
        project.write_config(config)
        log(f"deploy: pulumi up ({layout.key})")
        events_dir = self.scratch("deploy-events")
        events_dir.mkdir(parents=True)
        event_log = events_dir / "events.jsonl"
        project.cli.env["PULUMI_DEBUG_COMMANDS"] = "true"  # the CLI offers --event-log only then
        with EventTail(event_log) as tail:
            _, seconds = timed(lambda: project.run("up", "--yes", "--skip-preview", "--event-log",
                                                   str(event_log)))
        log(f"deploy: up in {seconds:.1f} s")
        dep = Deployment(lab=lab, project=project, layout=layout, config=config, up_seconds=seconds,
                         up_spans=spans(tail.events))
        self.current = dep
        dep.tls_files()  # pgha:tls on: pgha's client identity from the state, before any REST call
        dep.wait_healthy()
        return dep

    def ensure(self, layout: Layout) -> Deployment:
        """The current deployment when it has this layout and is healthy, else a new one."""
        dep = self.current
        if dep is not None and dep.layout == layout and dep.healthy():
            log(f"deploy: reusing the {layout.key} deployment")
            return dep
        return self.deploy(layout)

    def discard(self) -> None:
        """Forget the current deployment (after a failure): the next ensure() starts afresh."""
        self.current = None

    def close(self) -> None:
        """Take the lab down and delete every local file the run made (state, project copies)."""
        self.current = None
        try:
            Lab.down()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)


def request_ok(url: str, timeout: float = 2.0, verify: str | bool = True) -> bool:
    """GET url answers 200 (Patroni's /primary, as HAProxy's check asks it); `verify`: a CA file
    for https."""
    try:
        return requests.get(url, timeout=timeout, verify=verify).status_code == 200
    except requests.RequestException:
        return False
