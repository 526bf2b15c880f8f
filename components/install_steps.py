"""The shell scripts that prepare a host for Patroni (pure: plan in, text out).

Each script is what one pulumi-command resource runs, so it is what a reviewer reads in
`pulumi preview --diff`: a comment line saying what it does, the values it uses at the top,
then the steps. Every script converges when run again (after a failure, or on an update),
and none carries a secret: the proxy and index URLs (which may hold credentials) arrive
on stdin (`install_stdin`), and the scripts show them with credentials masked.

Scripts run as root: through `sudo -n` unless the SSH user is root (`as_root`). They contain
no single quote, so the quoted command stays readable in the preview.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import urlsplit, urlunsplit

# remote.CopyToRemote uploads the wheelhouse as the SSH user, into this directory of its home
# (a relative SFTP path): no root step has to prepare a place first.
UPLOAD_DIR = "pgha-wheelhouse"
OLD_UPLOAD_ROOT = "/var/cache/pgha"  # where the retired PatroniInstall uploaded it
UNIT_FILE = "/etc/systemd/system/patroni.service"
LINKS = ("/usr/local/bin/patroni", "/usr/local/bin/patronictl")
# Left in the virtualenv by the install: the install belongs to the pulumi-command resources,
# so the retired PatroniInstall provider's delete leaves the host alone (a stack upgraded from
# it deletes the old resources after the new ones exist).
MARKER = ".pgha-host-install"
DEFAULT_INDEX = "https://pypi.org/simple"

# Debian's python3-venv ships pip as a wheel, and pip runs from its wheel. A venv made
# --without-pip and filled by that pip takes 0.1 s instead of ensurepip's 5 s (measured
# on the lab); other systems fall back to a venv with its own pip.
_DISTRO_PIP = 'w=$(ls /usr/share/python-wheels/pip-*.whl 2>/dev/null | tail -n 1)'
# Installs run at low CPU priority: a reinstall (an upgrade) runs beside a live PostgreSQL, and
# a new cluster's replicas install beside the first host's bootstrap.
LOW_PRIORITY = "nice -n 10"


def make_venv(venv: str) -> str:
    """Shell: a fresh virtualenv at `venv` (removing what was there)."""
    v = shlex.quote(venv)
    return (f'{_DISTRO_PIP}; rm -rf {v} && if [ -n "$w" ]; then python3 -m venv --without-pip {v}; '
            f"else python3 -m venv {v}; fi")


def uv_install(venv: str, args: str) -> list[str]:
    """Shell lines: a fresh `venv`, filled by `uv pip install <args>` from the uv wheel `$uvw`
    (offline, bytecode compiled). uv installs in a third of pip's time on an idle lab host (1.0 s
    against 2.8 s; 4.3 s against 5.6 s with three hosts on the lab's 2 CPUs), and a first deploy
    waits for the install. uv runs from its wheel, unpacked beside the virtualenv and removed
    after."""
    v = shlex.quote(venv)
    parent = shlex.quote(str(PurePosixPath(venv).parent))
    return [
        f"rm -rf {parent}/.pgha-uv.*",
        f"uvd=$(mktemp -d {parent}/.pgha-uv.XXXXXX)",
        'python3 -m zipfile -e "$uvw" "$uvd"',
        'uv=$(ls "$uvd"/uv-*.data/scripts/uv)',
        'chmod 0755 "$uv"',
        f"rm -rf {v} && python3 -m venv --without-pip {v}",
        # Its cache beside the virtualenv (one filesystem): files are hardlinked, not copied twice.
        f'UV_NO_CONFIG=1 {LOW_PRIORITY} "$uv" pip install -q --offline --cache-dir "$uvd/cache" '
        f"--link-mode hardlink --compile-bytecode --python {v}/bin/python {args} </dev/null",
        'rm -rf "$uvd"',
    ]


def pip_install(venv: str, args: str, nice: bool = False) -> str:
    """Shell: `pip install -q <args>` into `venv`, with the distro's pip wheel when there is one
    (`nice`: at low CPU priority)."""
    v = shlex.quote(venv)
    low = f"{LOW_PRIORITY} " if nice else ""
    return (f'{_DISTRO_PIP}; if [ -n "$w" ]; then set -- {v}/bin/python "$w/pip"; '
            f'else set -- {v}/bin/pip; fi; {low}"$@" install -q --disable-pip-version-check {args}')


def masked(url: str | None) -> str:
    """A URL as the preview and error messages show it: without user and password."""
    if not url:
        return ""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))


@dataclass(frozen=True)
class InstallPlan:
    """What one host's install needs (planned from the stack config by specs.patroni_install_plan)."""

    host: str
    address: str
    ssh_user: str
    method: str  # "wheelhouse" | "index"
    version: str
    venv: str
    config_dir: str
    os_family: str
    pg_version: int
    etcd_member: bool
    wheelhouse: str | None = None  # on the machine running pulumi
    index_url: str | None = None
    proxy: str | None = None

    @property
    def remote_wheelhouse(self) -> str:
        """Where remote.CopyToRemote puts the wheelhouse (a directory copies into UPLOAD_DIR),
        as the shell names it: `~user/...`, expanded in an assignment."""
        assert self.wheelhouse
        return f"~{self.ssh_user}/{UPLOAD_DIR}/{PurePosixPath(self.wheelhouse).name}"

    @property
    def who(self) -> str:
        return f"{self.host} ({self.address})"


def as_root(script: str, ssh_user: str) -> str:
    """The command line that runs `script` as root; its text is the script itself."""
    shell = f"sh -euc {shlex.quote(script)}"
    return shell if ssh_user == "root" else f"sudo -n {shell}"


def sh_word(value: str) -> str:
    """A shell word for `value`, double-quoted when it needs quoting (the scripts hold no
    single quote, so that `as_root` quotes them verbatim)."""
    if value and all(c.isalnum() or c in "@%+=:,./-_" for c in value):
        return value
    if not any(c in value for c in '"$`\\\'!'):
        return f'"{value}"'
    return shlex.quote(value)


def _script(plan: InstallPlan, title: str, *lines: str) -> str:
    """The first line says where and what (it is what a preview shows, and errors quote it)."""
    return "\n" + "\n".join([f"# pgha on {plan.who}: {title}", *lines]) + "\n"


# -- the distro's own services ---------------------------------------------------------------


def distro_script(plan: InstallPlan) -> str:
    lines: list[str] = []
    if plan.os_family == "debian":
        ver = plan.pg_version
        conf = f"/etc/postgresql/{ver}/main/start.conf"
        lines += [
            f"# Debian starts a PostgreSQL {ver}/main cluster: stopped, start.conf disabled, units masked",
            f"if [ -f {conf} ]; then",
            f"  pg_ctlcluster {ver} main stop -m fast 2>/dev/null || true",
            f"  echo disabled > {conf}",
            "fi",
            "if [ -e /lib/systemd/system/postgresql.service ]; then",
            f"  systemctl mask -q --now postgresql@{ver}-main.service postgresql.service",
            "fi",
        ]
    if not plan.etcd_member:
        # Not masked: a host given the etcd role later gets the distro's etcd enabled by its
        # EtcdMember, which does not wait for this step.
        lines += [
            "# not an etcd member: the etcd of the distro is stopped and disabled",
            "if systemctl cat etcd.service >/dev/null 2>&1; then",
            "  systemctl disable -q --now etcd.service",
            "fi",
        ]
    lines.append("echo distro services: done")
    return _script(plan, "the services the distro starts stay stopped (their data is kept)", *lines)


# -- Patroni in its virtualenv ---------------------------------------------------------------


def install_stdin(plan: InstallPlan) -> str | None:
    """What the install reads on stdin: the proxy and the index URL, one a line (index
    installs only; either may be empty)."""
    if plan.method != "index":
        return None
    return f"{plan.proxy or ''}\n{plan.index_url or ''}\n"


_PROBE = ('"$venv/bin/python" -c "import importlib.metadata as m, psycopg2, etcd; '
          'print(m.version(\\"patroni\\"))" 2>/dev/null || true')

# Runs on the host with the proxy and index in its environment (never on a command line).
_PREFLIGHT = """\
import os, sys, urllib.request
proxy, index = os.environ["PGHA_PROXY"], os.environ["PGHA_INDEX"]
url = index.rstrip("/") + "/patroni/"
opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy, "https": proxy}))
try:
    opener.open(url, timeout=20).close()
except Exception as err:
    sys.exit(f"{sys.argv[1]}: pgha:patroni.install.proxy {sys.argv[2]} cannot fetch {sys.argv[3]}: "
             f"{err}. Nothing was changed on this host.")
"""


def _preflight(plan: InstallPlan, index_shown: str) -> list[str]:
    """Index installs through a proxy: check that the proxy serves the index before the
    install changes anything (the Python is a heredoc, so it keeps its own indentation)."""
    url = index_shown.split(" ")[0].rstrip("/") + "/patroni/"
    args = " ".join(sh_word(a) for a in (plan.who, masked(plan.proxy), url))
    return [
        "  # preflight, before anything changes on this host: the proxy serves the index",
        '  if [ -n "$proxy" ]; then',
        f'    PGHA_PROXY="$proxy" PGHA_INDEX="${{index:-{DEFAULT_INDEX}}}" python3 - {args} <<"PY"',
        *_PREFLIGHT.splitlines(),
        "PY",
        "  fi",
    ]


def patroni_script(plan: InstallPlan) -> str:
    req = '"patroni[etcd3]==$version"'  # the version is stated once, at the top
    if plan.method == "wheelhouse":
        source = f"the wheelhouse uploaded to {plan.remote_wheelhouse}"
        head = [f"wheels={plan.remote_wheelhouse}"]
        preflight: list[str] = []
        wanted = f'--no-index --find-links "$wheels" {req} psycopg2-binary'
        install = [
            'if [ ! -d "$wheels" ]; then echo "$host: no wheelhouse at $wheels" >&2; exit 1; fi',
            '# with uv when the wheelhouse carries its wheel, else with pip',
            'uvw=$(ls "$wheels"/uv-*.whl 2>/dev/null | tail -n 1)',
            'if [ -n "$uvw" ]; then',
            *(f"  {line}" for line in uv_install(plan.venv, wanted)),
            "else",
            f"  {make_venv(plan.venv)} </dev/null",
            "  export PIP_CONFIG_FILE=/dev/null",
            f"  {pip_install(plan.venv, wanted, nice=True)} </dev/null",
            "fi",
        ]
    else:
        index_shown = masked(plan.index_url) or f"{DEFAULT_INDEX} (the default)"
        source = f"the index {index_shown}"
        if plan.proxy:
            source += f" through the proxy {masked(plan.proxy)}"
        head = ["# stdin: the proxy, then the index URL (pgha:patroni.install.proxy, .indexUrl)",
                "IFS= read -r proxy || true", "IFS= read -r index || true"]
        preflight = _preflight(plan, index_shown)
        install = [
            'if [ -n "$proxy" ]; then export PIP_PROXY="$proxy"; fi',
            'if [ -n "$index" ]; then export PIP_INDEX_URL="$index"; fi',
            f"{make_venv(plan.venv)} </dev/null",
            pip_install(plan.venv, f"{req} psycopg2-binary", nice=True) + " </dev/null",
        ]
    return _script(
        plan, f"Patroni {plan.version} in {plan.venv}, from {source}",
        f"host={sh_word(plan.who)}",
        f"version={plan.version}",
        f"venv={sh_word(plan.venv)}",
        *head,
        f"have=$({_PROBE})",
        'if [ "$have" != "$version" ]; then',
        *preflight,
        "  # a fresh virtualenv also clears what an interrupted install left",
        *(f"  {line}" for line in install),
        "fi",
        f"have=$({_PROBE})",
        'if [ "$have" != "$version" ]; then',
        '  echo "$host: expected Patroni $version in $venv, found ${have:-none}" >&2',
        "  exit 1",
        "fi",
        *(f'ln -sf "$venv/bin/{PurePosixPath(link).name}" {link}' for link in LINKS),
        f'touch "$venv/{MARKER}"',
        'echo "patroni $have"',
    )


# -- the configuration directory and the systemd unit ----------------------------------------


def unit_script(plan: InstallPlan) -> str:
    conf = sh_word(plan.config_dir)
    return _script(
        plan, f"{plan.config_dir} and the systemd unit {UNIT_FILE} (the text of the unit is on stdin)",
        f"install -d -o postgres -g postgres -m 0750 {conf}",
        f'tmp=$(mktemp {PurePosixPath(UNIT_FILE).parent}/.patroni.service.XXXXXX)',
        'cat > "$tmp"',
        'chmod 0644 "$tmp"',
        f'if cmp -s "$tmp" {UNIT_FILE}; then',
        '  rm -f "$tmp"',
        "  echo unit: unchanged",
        "else",
        f'  mv -f "$tmp" {UNIT_FILE}',
        "  systemctl daemon-reload",
        "  echo unit: installed",
        "fi",
    )


# -- when the host leaves -------------------------------------------------------------------


def cleanup_script(plan: InstallPlan) -> str:
    """What deleting the install removes, run by PatroniHostCleanup (the steps themselves have
    no `delete`: pulumi-command fails one whose host is dead). Patroni was stopped by its node."""
    lines = [
        "systemctl disable -q --now patroni.service 2>/dev/null || true",
        f"rm -f {UNIT_FILE} {' '.join(LINKS)}",
        "systemctl daemon-reload",
        f"rm -rf {sh_word(plan.venv)} ~{plan.ssh_user}/{UPLOAD_DIR} {OLD_UPLOAD_ROOT}",
    ]
    if plan.os_family == "debian":
        units = f"postgresql@{plan.pg_version}-main.service postgresql.service"
        lines.append(f"systemctl unmask -q {units} 2>/dev/null || true")
    return _script(plan, "the host leaves: remove the unit, the virtualenv and the upload, unmask the "
                         "distro PostgreSQL (data directories are kept)", *lines)
