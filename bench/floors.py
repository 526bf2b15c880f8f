"""Floors: the least any tool could spend on the same job, measured in the same run.

- B1: the unavoidable steps of a first deploy, as a plain script over SSH on other fresh hosts
  (upload the wheelhouse + venv install on 3 hosts in parallel; initdb + start on one; a
  pg_basebackup of it on the two others in parallel). The scratch PostgreSQL it starts has its
  own directory, port and trust pg_hba: a throwaway on lab hosts, never pgha's config.
- B2: the same engine commands on a trivial program of as many no-op resources (bench/trivial).
- B3: a bare pg_basebackup from the leader to the host about to join, into a scratch directory.
- B5: restarting the nodes by hand, one after the other, through Patroni's REST API.

The shell text is built by pure functions so that it can be read (and checked) on its own.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from bench.deploy import Deployment, resources_summary, ssh_checked
from bench.timing import log, timed
from components.config import ClusterConfig
from components.providers.patroni_install import make_venv, pip_install
from components.transport.rest import LEADER_ROLES
from lab import Lab
from tests.cluster.conftest import wait_until
from tests.conftest import ROOT, PulumiCli, copy_project

T = TypeVar("T")

SCRATCH = "/var/tmp/pgha-bench-floor"
FLOOR_VENV = "/opt/pgha-bench-floor"
FLOOR_WHEELS = "/var/tmp/pgha-bench-wheels"
FLOOR_PORT = 5499
FLOOR_HBA = "host replication all 10.77.0.0/24 trust"
TRIVIAL_DIR = ROOT / "bench" / "trivial"


def parallel(fn: Callable[[str], T], names: Sequence[str]) -> list[T]:
    """fn on every host at once; the first exception is raised after all have finished."""
    with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
        return list(pool.map(fn, names))


# -- shell text (pure) ----------------------------------------------------------------------


def as_postgres(cmd: str) -> str:
    """Run cmd as postgres from a directory postgres may enter."""
    return f"cd /tmp && sudo -u postgres sh -c {shlex.quote(cmd)}"


def install_script(wheels: str, venv: str, version: str) -> str:
    """What PatroniInstall does with a wheelhouse (the same shell), and nothing else."""
    requirement = shlex.quote(f"patroni[etcd3]=={version}")
    script = (f"{make_venv(venv)} && export PIP_CONFIG_FILE=/dev/null && "
              + pip_install(venv, f"--no-index --find-links {wheels} {requirement} psycopg2-binary"))
    return f"sudo sh -c {shlex.quote(script)}"


def initdb_args(initdb: Sequence[Any]) -> list[str]:
    """pgha's `initdb` config entries as initdb flags, the way Patroni passes them."""
    args = []
    for entry in initdb:
        if isinstance(entry, dict):
            args += [f"--{k}={v}" for k, v in entry.items()]
        else:
            args.append(f"--{entry}")
    return args


def primary_script(bin_dir: str, initdb: Sequence[Any], address: str, scratch: str = SCRATCH,
                   port: int = FLOOR_PORT) -> str:
    """initdb + start of a throwaway cluster that the lab subnet may pg_basebackup (trust)."""
    data = f"{scratch}/data"
    flags = " ".join(shlex.quote(a) for a in initdb_args(initdb))
    # wal_keep_size as in pgha's clusters: two base backups in parallel, each forcing a
    # checkpoint, otherwise race for WAL segments that a checkpoint has just recycled.
    opts = (f"-c port={port} -c listen_addresses={address} -c unix_socket_directories={scratch} "
            "-c wal_keep_size=256MB")
    return as_postgres(
        f"{bin_dir}/initdb -D {data} --auth=trust {flags} >/dev/null && "
        f"echo {shlex.quote(FLOOR_HBA)} >> {data}/pg_hba.conf && "
        f"{bin_dir}/pg_ctl -D {data} -l {scratch}/primary.log -w -t 120 -o {shlex.quote(opts)} "
        "start >/dev/null")


def scratch_dir_script(scratch: str = SCRATCH) -> str:
    return f"sudo rm -rf {scratch} && sudo install -d -o postgres -g postgres -m 0700 {scratch}"


def basebackup_script(bin_dir: str, source: str, port: int, user: str, scratch: str = SCRATCH,
                      password_on_stdin: bool = False) -> str:
    """pg_basebackup into scratch/data; prints `elapsed START END` (host clock, seconds)."""
    read_pw = "IFS= read -r PGPASSWORD; export PGPASSWORD; " if password_on_stdin else ""
    return as_postgres(
        f"{read_pw}s=$(date +%s.%N); {bin_dir}/pg_basebackup -h {source} -p {port} -U {user} "
        f"-D {scratch}/data -X stream -c fast && e=$(date +%s.%N) && echo elapsed $s $e && "
        f"du -sb {scratch}/data")


def cleanup_script(bin_dir: str, scratch: str = SCRATCH) -> str:
    return (f"[ -f {scratch}/data/postmaster.pid ] && cd /tmp && sudo -u postgres {bin_dir}/pg_ctl "
            f"-D {scratch}/data -m immediate stop >/dev/null 2>&1; "
            f"sudo rm -rf {scratch} {FLOOR_VENV} {FLOOR_WHEELS}; true")


def parse_basebackup(stdout: str) -> tuple[float, int]:
    """(seconds, bytes) from basebackup_script's output."""
    seconds, size = 0.0, 0
    for line in stdout.splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == "elapsed":
            seconds = float(words[2]) - float(words[1])
        elif len(words) == 2 and words[0].isdigit():
            size = int(words[0])
    return seconds, size


# -- B1 ------------------------------------------------------------------------------------


def upload_dir(lab: Lab, name: str, src: str, dest: str, exclude: Sequence[str] = ()) -> None:
    """tar over SSH: the plain way to copy a wheelhouse (without the `exclude` patterns)."""
    excluded = [f"--exclude={pattern}" for pattern in exclude]
    with subprocess.Popen(["tar", "-C", src, *excluded, "-cf", "-", "."], stdout=subprocess.PIPE) as tar:
        proc = subprocess.run(lab.ssh_argv(name, f"sudo mkdir -p {dest} && sudo tar -xf - -C {dest}"),
                              stdin=tar.stdout, capture_output=True, timeout=600, check=False)
    if proc.returncode != 0 or tar.returncode != 0:
        raise RuntimeError(f"{name}: upload {src} failed: {proc.stderr.decode(errors='replace')[-800:]}")


def initial_deploy_floor(lab: Lab, cfg: ClusterConfig) -> dict[str, Any]:
    """B1's floor on fresh hosts: seconds per phase and their sum."""
    nodes = [h.name for h in cfg.with_role("patroni")]
    first, others = nodes[0], nodes[1:]
    pg = cfg.postgresql
    wheelhouse = str(lab.inv.wheelhouse)
    version = cfg.patroni.install.version

    def install(name: str) -> None:
        # The plain way installs with pip: uv's wheel (pgha's faster install) is not copied.
        upload_dir(lab, name, wheelhouse, FLOOR_WHEELS, exclude=["uv-*.whl"])
        ssh_checked(lab, name, install_script(FLOOR_WHEELS, FLOOR_VENV, version), what="venv + pip install")

    try:
        log(f"B1 floor: wheelhouse upload + venv install on {', '.join(nodes)} in parallel")
        _, install_s = timed(lambda: parallel(install, nodes))
        parallel(lambda n: ssh_checked(lab, n, scratch_dir_script(), what="scratch dir"), nodes)
        log(f"B1 floor: initdb + start on {first}")
        script = primary_script(pg.bin_dir, cfg.initdb, lab.hosts[first].address)
        _, primary_s = timed(lambda: ssh_checked(lab, first, script, what="initdb + start"))
        log(f"B1 floor: pg_basebackup on {', '.join(others)} in parallel")
        _, basebackup_s = timed(lambda: parallel(lambda n: ssh_checked(
            lab, n, basebackup_script(pg.bin_dir, lab.hosts[first].address, FLOOR_PORT, "postgres"),
            what="pg_basebackup"), others))
    finally:
        parallel(lambda n: lab.ssh(n, cleanup_script(pg.bin_dir), check=False, timeout=120), nodes)
    return {
        "install_s": install_s, "initdb_start_s": primary_s, "basebackup_s": basebackup_s,
        "total_s": install_s + primary_s + basebackup_s, "hosts": nodes,
    }


# -- B2 ------------------------------------------------------------------------------------


class TrivialProject:
    """bench/trivial copied to a scratch dir, on its own backend, with `count` no-op resources."""

    OVERHEAD = 2  # its Stack resource and the dynamic provider's default provider resource

    def __init__(self, base: Path, stack: str = "trivial") -> None:
        self.dir = copy_project(TRIVIAL_DIR, base / "project")
        pulumi_yaml = self.dir / "Pulumi.yaml"
        pulumi_yaml.write_text(pulumi_yaml.read_text().replace("../../.venv", str(ROOT / ".venv")))
        self.cli = PulumiCli(self.dir, base / "state", passphrase="pgha-bench-trivial")
        self.stack = stack
        self.cli.run("stack", "init", stack)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.cli.run(*args, "--stack", self.stack)

    def resource_count(self) -> int:
        return len(json.loads(self.run("stack", "export").stdout)["deployment"]["resources"])

    def deploy(self, total: int) -> int:
        """Apply so that the state holds `total` resources in all (as the real stack's export)."""
        count = max(1, total - self.OVERHEAD)
        for _ in range(3):
            self.run("config", "set", "count", str(count))
            self.run("up", "--yes", "--skip-preview")
            have = self.resource_count()
            if have == total or count + total - have < 1:
                return have
            count += total - have
        return self.resource_count()


def noop_overhead(dep: Deployment, trivial: TrivialProject, runs: int = 3) -> dict[str, Any]:
    """No-change preview and up, real stack vs trivial program, interleaved, `runs` each."""
    real_total = dep.resource_count()
    trivial_total = trivial.deploy(real_total)
    # One untimed round first: both start with warm caches (bytecode, plugins, page cache).
    dep.run("preview")
    trivial.run("preview")
    times: dict[str, list[float]] = {f"{who}_{kind}": [] for kind in ("preview", "up")
                                     for who in ("real", "trivial")}
    summaries: dict[str, str] = {}
    commands = {"preview": ("preview",), "up": ("up", "--yes", "--skip-preview")}
    for i in range(runs):
        for kind, args in commands.items():
            for who, runner in (("real", dep.run), ("trivial", trivial.run)):
                proc, seconds = timed(lambda r=runner, a=args: r(*a))
                times[f"{who}_{kind}"].append(seconds)
                summaries[f"{who}_{kind}"] = resources_summary(proc.stdout)
        log(f"B2 ({dep.layout.key}): round {i + 1}/{runs}: "
            + ", ".join(f"{k} {v[-1]:.1f}s" for k, v in times.items()))
    return {"real_resources": real_total, "trivial_resources": trivial_total, "runs_s": times,
            "summaries": summaries}


# -- B3 ------------------------------------------------------------------------------------


def basebackup_floor(dep: Deployment, target: str,
                     scratch: str = "/var/tmp/pgha-bench-basebackup") -> dict[str, Any]:
    """A bare pg_basebackup from the leader to `target` (not yet a member), timed on the host."""
    cfg = dep.model()
    leader = dep.leader()
    if leader is None:
        raise RuntimeError("no leader to pg_basebackup from")
    pg = cfg.postgresql
    ssh_checked(dep.lab, target, scratch_dir_script(scratch), what="scratch dir")
    try:
        proc, wall = timed(lambda: ssh_checked(
            dep.lab, target, basebackup_script(pg.bin_dir, dep.nodes()[leader], pg.port, pg.replication_user,
                                               scratch, password_on_stdin=True),
            input=dep.generated_password("replication") + "\n", timeout=3600, what="pg_basebackup"))
    finally:
        dep.lab.ssh(target, f"sudo rm -rf {scratch}", check=False, timeout=300)
    seconds, size = parse_basebackup(proc.stdout)
    return {"seconds": seconds or wall, "wall_s": wall, "bytes": size, "source": leader}


# -- B5 ------------------------------------------------------------------------------------


def manual_restarts(dep: Deployment, timeout: float = 300) -> dict[str, Any]:
    """POST /restart on each node, replicas first, leader last, each back before the next."""
    members = dep.members()
    leader = next(n for n, m in members.items() if m.get("role") in LEADER_ROLES)
    order = [*sorted(n for n in members if n != leader), leader]

    def back(name: str) -> bool:
        member = dep.members().get(name, {})
        if name == leader:
            return member.get("role") in LEADER_ROLES and member.get("state") == "running"
        return member.get("state") == "streaming"

    def restart_all() -> None:
        for name in order:
            resp = dep.api(name).restart()
            if resp.status_code not in (200, 202):
                raise RuntimeError(f"POST /restart on {name}: HTTP {resp.status_code} {resp.text[:200]}")
            wait_until(lambda n=name: back(n), timeout=timeout, what=f"{name} back after its restart",
                       interval=0.25)

    _, seconds = timed(restart_all)
    return {"seconds": seconds, "order": order}


# -- B6 ------------------------------------------------------------------------------------

RESTORE_SCRATCH = "/var/tmp/pgha-bench-restore"
RESTORE_KEY_TAG = "pgha-bench-restore-floor"


def restore_floor_conf(repo_address: str, repo_user: str, stanza: str, process_max: int,
                       scratch: str = RESTORE_SCRATCH) -> str:
    """A minimal pgbackrest.conf for a bare host: the repository host over SSH (a wrapper that
    uses a scratch key), logs and locks in the scratch directory, the data directory there."""
    return "\n".join([
        "[global]",
        f"repo1-host={repo_address}",
        f"repo1-host-user={repo_user}",
        f"cmd-ssh={scratch}/ssh/ssh",
        f"log-path={scratch}/log",
        f"lock-path={scratch}/lock",
        "log-level-console=warn",
        "log-level-file=info",
        f"process-max={process_max}",
        "",
        f"[{stanza}]",
        f"pg1-path={scratch}/data",
        "",
    ])


def restore_ssh_wrapper(scratch: str = RESTORE_SCRATCH) -> str:
    """The SSH client pgBackRest runs (cmd-ssh): the scratch key and known_hosts, nothing else."""
    return ("#!/bin/sh\n"
            f"exec ssh -i {scratch}/ssh/id -o IdentitiesOnly=yes "
            f"-o UserKnownHostsFile={scratch}/ssh/known_hosts "
            "-o StrictHostKeyChecking=yes -o BatchMode=yes \"$@\"\n")


def restore_setup_script(scratch: str = RESTORE_SCRATCH) -> str:
    """Scratch directories and a fresh key for postgres on the floor host; prints the public key."""
    dirs = " ".join(f"{scratch}/{d}" for d in ("ssh", "log", "lock", "data"))
    return (f"{scratch_dir_script(scratch)} && sudo install -d -o postgres -g postgres -m 0700 {dirs} && "
            + as_postgres(f"ssh-keygen -q -t ed25519 -N '' -C {RESTORE_KEY_TAG} -f {scratch}/ssh/id && "
                          f"cat {scratch}/ssh/id.pub"))


def write_as_postgres(path: str, mode: str = "0600") -> str:
    """Write stdin to path, owned by postgres."""
    return as_postgres(f"umask 077 && cat > {path} && chmod {mode} {path}")


def trust_key_script(home: str, public_key: str) -> str:
    """On the repository host: the floor's key in the repository user's authorized_keys, tagged."""
    line = f"restrict {' '.join(public_key.split()[:2])} {RESTORE_KEY_TAG}"
    return f"echo {shlex.quote(line)} | sudo tee -a {home}/.ssh/authorized_keys >/dev/null"


def untrust_key_script(home: str) -> str:
    return f"sudo sed -i '/ {RESTORE_KEY_TAG}$/d' {home}/.ssh/authorized_keys"


def restore_script(bin_dir: str, stanza: str, label: str, scratch: str = RESTORE_SCRATCH,
                   port: int = FLOOR_PORT, timeout_s: int = 1800) -> str:
    """The timed part: `pgbackrest restore` of the set (default type: replay to the end of the
    archive), then PostgreSQL started from it until it accepts writes (recovery over,
    promoted). The configuration the backup carries is Patroni's (addresses, paths of the
    source node): the server gets its own port, socket, pg_hba (peer for postgres) and no
    archiving. Prints `elapsed START RESTORED WRITABLE` (host clock) and the data size."""
    conf = f"{scratch}/pgbackrest.conf"
    data = f"{scratch}/data"
    restore_command = f"pgbackrest --config={conf} --stanza={stanza} archive-get %f \"%p\""
    set_command = shlex.quote(f"restore_command = {pg_quote(restore_command)}")
    set_command = shlex.quote(f"restore_command = {pg_quote(restore_command)}")
    opts = (f"-c port={port} -c listen_addresses= -c unix_socket_directories={scratch} "
            f"-c hba_file={scratch}/hba.conf -c ident_file={scratch}/ident.conf -c archive_mode=off "
            "-c hot_standby=on")
    psql = f"{bin_dir}/psql -h {scratch} -p {port} -d postgres -XAtq"
    return as_postgres(
        f"s=$(date +%s.%N) && pgbackrest --config={conf} --stanza={stanza} --set={label} restore && "
        f"r=$(date +%s.%N) && rm -f {data}/standby.signal && touch {data}/recovery.signal && "
        f"{{ [ -f {data}/postgresql.conf ] || touch {data}/postgresql.conf; }} && "
        # pgBackRest writes the restore_command; make sure it names this config file.
        f"{{ grep -q -- '--config={conf}' {data}/postgresql.auto.conf || "
        f"echo {set_command} >> {data}/postgresql.auto.conf; }} && "
        f"{bin_dir}/pg_ctl -D {data} -l {scratch}/postgresql.log -w -t {timeout_s} "
        f"-o {shlex.quote(opts)} start >/dev/null && "
        f"n=0; until [ \"$({psql} -c 'SELECT pg_is_in_recovery()' 2>/dev/null)\" = f ]; do "
        f"n=$((n+1)); [ $n -lt {timeout_s * 20} ] || exit 3; sleep 0.05; done; "
        f"{psql} -c 'CREATE TABLE pgha_bench_restore_probe (id int); DROP TABLE pgha_bench_restore_probe' && "
        f"e=$(date +%s.%N) && echo elapsed $s $r $e && du -sb {data}")


def pg_quote(text: str) -> str:
    """A PostgreSQL configuration string literal."""
    return "'" + text.replace("'", "''") + "'"


def restore_cleanup_script(bin_dir: str, scratch: str = RESTORE_SCRATCH) -> str:
    return cleanup_script(bin_dir, scratch)


def parse_restore(stdout: str) -> dict[str, float | int]:
    """restore_script's output: seconds of the restore, of start-until-writable, their total, bytes."""
    out: dict[str, float | int] = {}
    for line in stdout.splitlines():
        words = line.split()
        if len(words) == 4 and words[0] == "elapsed":
            start, restored, writable = (float(w) for w in words[1:])
            out.update(restore_s=restored - start, start_s=writable - restored, total_s=writable - start)
        elif len(words) == 2 and words[0].isdigit():
            out["bytes"] = int(words[0])
    return out


def command_end_ms(log: str, command: str) -> int | None:
    """pgBackRest's own duration of the last `command` in its log file
    (`restore command end: completed successfully (12345ms)`)."""
    found = re.findall(rf"{re.escape(command)} command end: completed successfully \((\d+)ms\)", log)
    return int(found[-1]) if found else None


def restore_floor(dep: Deployment, target: str, repo: str, label: str) -> dict[str, Any]:
    """B6's floor on `target`, a bare host: set up untimed (scratch key trusted by the repository
    user, config), then the restore + start timed, then everything removed again."""
    cfg = dep.model()
    if cfg.backup is None:
        raise RuntimeError("the stack has no pgha:backup")
    pg = cfg.postgresql
    lab = dep.lab
    repo_user = "pgbackrest"
    repo_address = lab.hosts[repo].address
    home = ssh_checked(lab, repo, f"getent passwd {repo_user} | cut -d: -f6", what="repository user's home"
                       ).stdout.strip()
    ssh_checked(lab, target, "command -v pgbackrest >/dev/null || sudo DEBIAN_FRONTEND=noninteractive "
                "apt-get install -y -q --no-install-recommends pgbackrest", what="pgbackrest installed")
    public_key = ssh_checked(lab, target, restore_setup_script(), what="scratch dir and key").stdout.strip()
    host_key = ssh_checked(lab, repo, "cat /etc/ssh/ssh_host_ed25519_key.pub", what="host key").stdout
    files = {
        f"{RESTORE_SCRATCH}/pgbackrest.conf": restore_floor_conf(repo_address, repo_user, cfg.backup.stanza,
                                                                 cfg.backup.process_max),
        f"{RESTORE_SCRATCH}/ssh/known_hosts": f"{repo_address} {' '.join(host_key.split()[:2])}\n",
        f"{RESTORE_SCRATCH}/ssh/ssh": restore_ssh_wrapper(),
        f"{RESTORE_SCRATCH}/hba.conf": "local all postgres peer\n",
        f"{RESTORE_SCRATCH}/ident.conf": "",
    }
    for path, text in files.items():
        ssh_checked(lab, target, write_as_postgres(path, "0700" if path.endswith("/ssh") else "0600"),
                    input=text, what=f"write {path}")
    ssh_checked(lab, repo, trust_key_script(home, public_key), what="trust the floor's key")
    try:
        proc, wall = timed(lambda: ssh_checked(
            lab, target, restore_script(pg.bin_dir, cfg.backup.stanza, label), timeout=3600,
            what="pgbackrest restore + start"))
        result: dict[str, Any] = {"host": target, "set": label, "wall_s": wall, **parse_restore(proc.stdout)}
        log_text = lab.ssh(target, f"sudo cat {RESTORE_SCRATCH}/log/{cfg.backup.stanza}-restore.log",
                           check=False).stdout
        result["pgbackrest_restore_ms"] = command_end_ms(log_text, "restore")
    finally:
        lab.ssh(repo, untrust_key_script(home), check=False, timeout=60)
        lab.ssh(target, restore_cleanup_script(pg.bin_dir), check=False, timeout=300)
    return result
