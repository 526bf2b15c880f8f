"""The host install's pure parts: pinned host keys from known_hosts, and the scripts the
pulumi-command resources run (readable, free of secrets, valid shell, a clear preflight)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import shutil
import socket
import subprocess
import sys

import pytest

from components import install_steps as steps
from components.install_steps import InstallPlan
from components.known_hosts import HostKeyError, pinned_host_key
from components.providers.patroni_install import PatroniInstallProvider, retired_delete_script

ED = "AAAAC3NzaC1lZDI1NTE5AAAAIPQA+Se1jAR9iwwkpXz2eq/8O+PvwnsXPZTTSjEbepTO"
EC = "AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBOTHERKEY="
SRC = "pgha:ssh.knownHostsFile (/etc/pgha/known_hosts)"
PROXY = "http://deploy:s3cret-Pw@proxy.corp:3128"
INDEX = "https://reader:t0ken@pypi.corp/simple/"


def _hashed(token: str) -> str:
    salt = os.urandom(20)
    digest = hmac.new(salt, token.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


# --- known_hosts -------------------------------------------------------------------------


def test_known_hosts_plain_and_aliases() -> None:
    text = f"# lab\n10.77.0.11,pg1 ssh-ed25519 {ED}\n10.77.0.12,pg2 ssh-ed25519 OTHER\n"
    assert pinned_host_key(text, "10.77.0.11", 22, SRC) == f"ssh-ed25519 {ED}"


def test_known_hosts_port_and_brackets() -> None:
    """A port other than 22 is `[addr]:port`; `[` is no wildcard class."""
    text = f"10.0.0.5 ssh-ed25519 WRONG\n[10.0.0.5]:2222 ssh-ed25519 {ED}\n"
    assert pinned_host_key(text, "10.0.0.5", 2222, SRC) == f"ssh-ed25519 {ED}"
    assert pinned_host_key(text, "10.0.0.5", 22, SRC) == "ssh-ed25519 WRONG"


def test_known_hosts_hashed_wildcards_and_negation() -> None:
    assert pinned_host_key(f"{_hashed('10.1.2.3')} ssh-ed25519 {ED}\n", "10.1.2.3", 22, SRC).endswith(ED)
    text = f"10.9.*,!10.9.0.66 ssh-ed25519 {ED}\n"
    assert pinned_host_key(text, "10.9.0.65", 22, SRC).endswith(ED)
    with pytest.raises(HostKeyError):
        pinned_host_key(text, "10.9.0.66", 22, SRC)


def test_known_hosts_pins_one_key_ed25519_first() -> None:
    """Several keys for one host: pulumi-command offers only the pinned key's type."""
    text = f"h1 ecdsa-sha2-nistp256 {EC}\nh1 ssh-ed25519 {ED}\n"
    assert pinned_host_key(text, "h1", 22, SRC) == f"ssh-ed25519 {ED}"
    assert pinned_host_key(f"h1 ecdsa-sha2-nistp256 {EC}\n", "h1", 22, SRC) == f"ecdsa-sha2-nistp256 {EC}"


def test_known_hosts_revoked_and_ca_lines() -> None:
    text = f"@cert-authority *.corp ssh-ed25519 CAKEY\n@revoked h2 ssh-ed25519 {ED}\nh2 ssh-ed25519 {ED}\n"
    with pytest.raises(HostKeyError, match="only revoked keys for h2"):
        pinned_host_key(text, "h2", 22, SRC)


def test_known_hosts_missing_host_names_file_and_fix() -> None:
    with pytest.raises(HostKeyError) as err:
        pinned_host_key(f"10.77.0.11 ssh-ed25519 {ED}\n", "10.77.0.15", 22, SRC)
    message = str(err.value)
    assert message.startswith(f"{SRC} has no key for 10.77.0.15")
    assert "ssh-keyscan -p 22 10.77.0.15" in message


# --- scripts -----------------------------------------------------------------------------


def _plan(method: str = "wheelhouse", **changes: object) -> InstallPlan:
    base: dict[str, object] = dict(
        host="pg1", address="10.77.0.11", ssh_user="pgha", method=method, version="4.1.5",
        venv="/opt/patroni", config_dir="/etc/patroni", os_family="debian", pg_version=15,
        etcd_member=True, wheelhouse="/var/cache/pgha-lab/wheelhouse" if method == "wheelhouse" else None,
        index_url=INDEX if method == "index" else None, proxy=PROXY if method == "index" else None)
    base.update(changes)
    return InstallPlan(**base)  # type: ignore[arg-type]


PLANS = [
    pytest.param(_plan(), id="wheelhouse"),
    pytest.param(_plan("index"), id="index+proxy"),
    pytest.param(_plan("index", proxy=None, index_url=None), id="index-default"),
    pytest.param(_plan(etcd_member=False, os_family="rhel", ssh_user="root"), id="rhel-root-not-etcd"),
]
SCRIPTS = (steps.distro_script, steps.patroni_script, steps.unit_script, steps.cleanup_script)


@pytest.mark.parametrize("plan", PLANS)
def test_scripts_are_valid_shell_without_quotes_or_secrets(plan: InstallPlan) -> None:
    """No single quote (the command line quotes the script verbatim, so the preview reads it as
    written), no credential (they travel on stdin), and `sh -n` parses every one."""
    for build in SCRIPTS:
        script = build(plan)
        assert "'" not in script, (build.__name__, script)
        for secret in ("s3cret-Pw", "t0ken", "deploy:", "reader:"):
            assert secret not in script, (build.__name__, secret)
        command = steps.as_root(script, plan.ssh_user)
        sudo = "" if plan.ssh_user == "root" else "sudo -n "
        assert command == f"{sudo}sh -euc '{script}'"
        parsed = subprocess.run(["sh", "-n", "-c", script], capture_output=True, text=True, check=False)
        assert parsed.returncode == 0, (build.__name__, parsed.stderr)


def test_the_secrets_go_on_stdin_and_show_masked() -> None:
    plan = _plan("index")
    assert steps.install_stdin(plan) == f"{PROXY}\n{INDEX}\n"
    assert steps.install_stdin(_plan()) is None
    script = steps.patroni_script(plan)
    assert "through the proxy http://***@proxy.corp:3128" in script.splitlines()[1]
    assert "https://***@pypi.corp/simple/" in script
    assert steps.masked("http://proxy:3128") == "http://proxy:3128"


def test_patroni_script_reads_first_and_checks_the_version() -> None:
    script = steps.patroni_script(_plan("index"))
    lines = script.splitlines()
    assert lines[1].startswith("# pgha on pg1 (10.77.0.11): Patroni 4.1.5 in /opt/patroni, from the index")
    # The preflight comes before the virtualenv is touched.
    assert script.index("python3 - ") < script.index("rm -rf /opt/patroni")
    assert 'export PIP_PROXY="$proxy"' in script and 'export PIP_INDEX_URL="$index"' in script
    assert f'touch "$venv/{steps.MARKER}"' in script
    assert lines[-1] == 'echo "patroni $have"'
    wheel = steps.patroni_script(_plan())
    assert "python3 - " not in wheel and "--no-index --find-links" in wheel
    # uv when the wheelhouse carries its wheel (offline, compiled), else pip; either way from a
    # fresh virtualenv, and index installs with pip only.
    uv_branch, _, pip_branch = wheel.partition("\n  else\n")
    assert 'uvw=$(ls "$wheels"/uv-*.whl 2>/dev/null | tail -n 1)' in uv_branch
    uv = ('nice -n 10 "$uv" pip install -q --offline --cache-dir "$uvd/cache" --link-mode hardlink '
          '--compile-bytecode --python /opt/patroni/bin/python --no-index --find-links "$wheels"')
    assert uv in uv_branch
    assert uv_branch.index("rm -rf /opt/patroni && python3 -m venv --without-pip /opt/patroni") < \
        uv_branch.index('"$uv" pip install')
    assert "rm -rf /opt/patroni" in pip_branch and 'nice -n 10 "$@" install -q' in pip_branch
    assert "uv" not in script
    assert _plan().remote_wheelhouse == "~pgha/pgha-wheelhouse/wheelhouse"
    assert "wheels=~pgha/pgha-wheelhouse/wheelhouse" in wheel.splitlines()


def test_distro_script_masks_postgresql_and_stops_etcd_only_off_members() -> None:
    member = steps.distro_script(_plan())
    assert "systemctl mask -q --now postgresql@15-main.service postgresql.service" in member
    assert "echo disabled > /etc/postgresql/15/main/start.conf" in member
    assert "etcd" not in member
    other = steps.distro_script(_plan(etcd_member=False))
    assert "systemctl disable -q --now etcd.service" in other
    assert "postgresql" not in steps.distro_script(_plan(etcd_member=False, os_family="rhel"))


def test_cleanup_removes_what_the_steps_installed() -> None:
    script = steps.cleanup_script(_plan())
    assert script.splitlines()[1].startswith("# pgha on pg1 (10.77.0.11): the host leaves")
    for part in ("systemctl disable -q --now patroni.service", steps.UNIT_FILE, *steps.LINKS,
                 "rm -rf /opt/patroni ~pgha/pgha-wheelhouse /var/cache/pgha",
                 "systemctl unmask -q postgresql@15-main.service"):
        assert part in script, part
    assert "systemctl unmask" not in steps.cleanup_script(_plan(os_family="rhel"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(shutil.which("python3") is None, reason="needs python3")
def test_preflight_names_the_host_and_the_proxy_key() -> None:
    """The preflight's own Python, run here against a proxy port nobody listens on."""
    dead = f"http://user:pw@127.0.0.1:{_free_port()}"
    env = {**os.environ, "PGHA_PROXY": dead, "PGHA_INDEX": "http://127.0.0.1:9/simple"}
    proc = subprocess.run([sys.executable, "-", "pg2 (10.77.0.12)", steps.masked(dead),
                           "http://127.0.0.1:9/simple/patroni/"], input=steps._PREFLIGHT, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1
    message = proc.stderr.strip()
    assert message.startswith("pg2 (10.77.0.12): pgha:patroni.install.proxy http://***@127.0.0.1:")
    assert "cannot fetch http://127.0.0.1:9/simple/patroni/" in message
    assert message.endswith("Nothing was changed on this host.")
    assert "pw" not in message.replace("pgha", "")


def test_the_retired_provider_leaves_an_upgraded_host_alone() -> None:
    """A stack upgraded from PatroniInstall deletes the old resources after the new steps ran:
    the install's marker makes the old delete a no-op; without it, the old delete as before."""
    script = retired_delete_script("/opt/patroni")
    assert script.startswith(f"if [ -e /opt/patroni/{steps.MARKER} ]; then exit 0; fi; ")
    assert "rm -rf /opt/patroni /var/cache/pgha/wheelhouse" in script
    assert f'touch "$venv/{steps.MARKER}"' in steps.patroni_script(_plan())
    with pytest.raises(RuntimeError, match="retired"):
        PatroniInstallProvider().create({})
