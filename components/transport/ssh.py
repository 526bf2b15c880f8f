"""Commands and files on a host over SSH (paramiko).

Host keys are checked against an explicit known_hosts file by default; an
unknown or changed key stops the operation. Commands never carry secrets on
their command line (visible in ``ps``): secret content travels on stdin.

paramiko is imported where a connection is made, not with this module: a
preview imports every provider but never connects, and paramiko's import was a
measurable share of a no-change preview (bench B2).
"""

from __future__ import annotations

import io
import logging
import os
import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import paramiko

# paramiko's transport thread logs every failed handshake with a traceback, which Python's
# last-resort handler prints into the user's output; the failure reaches the user as an
# SshError naming the host and the step instead.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


class SshError(RuntimeError):
    """A failed step on a host; the message names the host and the step."""

    def __init__(self, host: str, step: str, detail: str) -> None:
        self.host = host
        self.step = step
        super().__init__(f"{host}: {step}: {detail}")


def describe(exc: BaseException) -> str:
    """An exception as words: some (paramiko's EOFError when a host goes away) have none."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else f"{type(exc).__name__} (no message)"


@dataclass(frozen=True)
class SshTarget:
    host: str
    port: int = 22
    user: str = "root"
    private_key_file: str | None = None
    private_key: str | None = None
    known_hosts_file: str = "~/.ssh/known_hosts"
    strict_host_keys: bool = True
    bastion: tuple[str, int, str] | None = None

    @classmethod
    def from_props(cls, conn: dict[str, Any], private_key: str | None = None) -> SshTarget:
        bastion = conn.get("bastion")
        return cls(
            host=conn["host"], port=int(conn.get("port", 22)), user=conn.get("user", "root"),
            private_key_file=conn.get("private_key_file"), private_key=private_key or None,
            known_hosts_file=conn.get("known_hosts_file") or "~/.ssh/known_hosts",
            strict_host_keys=bool(conn.get("strict_host_keys", True)),
            bastion=(bastion["host"], int(bastion.get("port", 22)), bastion.get("user", "root"))
            if bastion else None,
        )


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str


def _load_key(target: SshTarget) -> paramiko.PKey | None:
    import paramiko

    if target.private_key:
        text = target.private_key
        for kind in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
            try:
                return kind.from_private_key(io.StringIO(text))
            except paramiko.SSHException:
                continue
        raise SshError(target.host, "load SSH key", "pgha:sshPrivateKey is not a supported private key")
    return None


def _client(target: SshTarget) -> paramiko.SSHClient:
    import paramiko

    client = paramiko.SSHClient()
    known = os.path.expanduser(target.known_hosts_file)
    if os.path.exists(known):
        client.load_host_keys(known)
    elif target.strict_host_keys:
        raise SshError(target.host, "check host key", f"known_hosts file {known} does not exist")
    client.set_missing_host_key_policy(
        paramiko.RejectPolicy() if target.strict_host_keys else paramiko.AutoAddPolicy())
    return client


class Ssh:
    """One SSH session to one host, used as a context manager."""

    def __init__(self, target: SshTarget, connect_timeout: float = 15.0) -> None:
        self.target = target
        self.connect_timeout = connect_timeout
        self._client: paramiko.SSHClient | None = None
        self._bastion: paramiko.SSHClient | None = None

    def __enter__(self) -> Ssh:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        import paramiko

        t = self.target
        key = _load_key(t)
        sock = None
        try:
            if t.bastion:
                b_host, b_port, b_user = t.bastion
                self._bastion = _client(t)
                self._bastion.connect(b_host, port=b_port, username=b_user, pkey=key,
                                      key_filename=t.private_key_file, timeout=self.connect_timeout,
                                      allow_agent=False, look_for_keys=False)
                transport = self._bastion.get_transport()
                assert transport is not None
                sock = transport.open_channel("direct-tcpip", (t.host, t.port), ("127.0.0.1", 0))
            self._client = _client(t)
            self._client.connect(t.host, port=t.port, username=t.user, pkey=key,
                                 key_filename=t.private_key_file, timeout=self.connect_timeout,
                                 banner_timeout=self.connect_timeout, auth_timeout=self.connect_timeout,
                                 allow_agent=False, look_for_keys=False, sock=sock)
        except paramiko.BadHostKeyException as err:
            self.close()
            raise SshError(t.host, "check host key",
                           f"host key CHANGED (got {err.key.get_fingerprint().hex()}); refusing to "
                           f"connect. If the host was rebuilt, update {t.known_hosts_file}") from err
        except paramiko.SSHException as err:
            self.close()
            raise SshError(t.host, "connect over SSH", str(err)) from err
        except (TimeoutError, OSError) as err:
            self.close()
            raise SshError(t.host, "connect over SSH", f"{t.user}@{t.host}:{t.port}: {err}") from err

    def close(self) -> None:
        for client in (self._client, self._bastion):
            if client is not None:
                client.close()
        self._client = None
        self._bastion = None

    def run(self, script: str, *, step: str, stdin: str | bytes | None = None, sudo: bool = True,
            check: bool = True, timeout: float = 300.0) -> Result:
        """Run a shell script as root (through sudo unless we are root)."""
        import paramiko

        if self._client is None:
            raise SshError(self.target.host, step, "not connected")
        command = f"sh -c {shlex.quote(script)}"
        if sudo and self.target.user != "root":
            command = f"sudo -n {command}"
        try:
            chan_in, chan_out, chan_err = self._client.exec_command(command, timeout=timeout)
            if stdin is not None:
                chan_in.write(stdin.encode() if isinstance(stdin, str) else stdin)
            chan_in.channel.shutdown_write()
            out = chan_out.read().decode(errors="replace")
            err = chan_err.read().decode(errors="replace")
            code = chan_out.channel.recv_exit_status()
        except (TimeoutError, EOFError, paramiko.SSHException, OSError) as exc:
            raise SshError(self.target.host, step, f"connection lost: {describe(exc)}") from exc
        if check and code != 0:
            detail = (err.strip() or out.strip())[-1500:]
            raise SshError(self.target.host, step, f"exit {code}: {detail}")
        return Result(code, out, err)

    def write_file(self, path: str, content: str | bytes, *, step: str, mode: str = "0644",
                   owner: str = "root", group: str = "root") -> bool:
        """Atomically install a file; content travels on stdin. Returns True if it changed."""
        directory = os.path.dirname(path)
        script = (
            "set -e; umask 077; "
            f"tmp=$(mktemp {shlex.quote(directory)}/.pgha.XXXXXX); "
            'cat > "$tmp"; '
            f'chown {shlex.quote(owner)}:{shlex.quote(group)} "$tmp"; chmod {mode} "$tmp"; '
            f'if cmp -s "$tmp" {shlex.quote(path)} && '
            f'[ "$(stat -c %a:%U:%G {shlex.quote(path)})" = "$(stat -c %a:%U:%G "$tmp")" ]; '
            'then rm -f "$tmp"; echo unchanged; '
            f'else mv -f "$tmp" {shlex.quote(path)}; echo changed; fi'
        )
        result = self.run(script, step=step, stdin=content)
        return result.stdout.strip().endswith("changed") and "unchanged" not in result.stdout

    def upload_dir(self, local_dir: str, remote_dir: str, *, step: str) -> None:
        """Copy a directory of files (a wheelhouse) to the host with SFTP."""
        import paramiko

        if self._client is None:
            raise SshError(self.target.host, step, "not connected")
        staging = f"/tmp/pgha-upload-{os.getpid()}-{int(time.time())}"
        try:
            sftp = self._client.open_sftp()
            try:
                sftp.mkdir(staging, mode=0o755)
                for name in sorted(os.listdir(local_dir)):
                    src = os.path.join(local_dir, name)
                    if os.path.isfile(src):
                        sftp.put(src, f"{staging}/{name}")
            finally:
                sftp.close()
        except (OSError, EOFError, paramiko.SSHException) as err:
            raise SshError(self.target.host, step, f"upload {local_dir}: {describe(err)}") from err
        self.run(f"rm -rf {shlex.quote(remote_dir)} && mkdir -p {shlex.quote(os.path.dirname(remote_dir))} "
                 f"&& mv {staging} {shlex.quote(remote_dir)} && chown -R root:root {shlex.quote(remote_dir)}",
                 step=step)


_NOTIFY_LOCK = threading.Lock()


def enable_unit(unit: str) -> str:
    """Shell: enable a systemd unit unless it is enabled already. Debian's etcd and HAProxy
    also ship a SysV script, so `systemctl enable` runs update-rc.d each time (0.3 s)."""
    return f"systemctl is-enabled -q {unit} 2>/dev/null || systemctl enable -q {unit} >/dev/null 2>&1"


def notify(host: str, message: str, *, warning: bool = False) -> None:
    """Tell the user something now, naming the host (or cluster) it is about.

    A dynamic provider has no engine connection: pulumi.log prints to the provider's
    stderr, and the engine shows each line at once as a message of the stack (checked
    with Pulumi 3.259: `info: ...` / `warning: ...` under the stack's diagnostics). The
    provider serves several resources on threads; one line at a time keeps them apart.
    """
    import pulumi

    text = f"{host}: {message}" if host else message
    with _NOTIFY_LOCK:
        (pulumi.log.warn if warning else pulumi.log.info)(text)


class WaitFailed(SshError):
    """A wait that ended without what it waited for: it timed out, or it stopped early
    because the cause that keeps it from happening was visible (`cause`).

    It is an SshError because that is the step failure every provider raises and catches
    (a wait names its host and step like any other step); `cause` is None on a timeout.
    """

    def __init__(self, host: str, what: str, detail: str, cause: str | None = None) -> None:
        super().__init__(host, f"wait for {what}", detail)
        self.what = what
        self.cause = cause


class UnitStopped:
    """Whether a systemd unit a wait depends on has stopped, from successive
    `systemctl is-active` answers: `failed` at once; `inactive` only when seen twice in a
    row, since a restart passes through it (and through `deactivating`, `activating`)."""

    def __init__(self) -> None:
        self.inactive_before = False

    def __call__(self, state: str) -> bool:
        if state == "failed":
            return True
        stopped = state == "inactive" and self.inactive_before
        self.inactive_before = state == "inactive"
        return stopped


# A wait tells the user what it waits for once it has lasted this long (shorter waits
# are part of a step, not something to report), then every PROGRESS_EVERY seconds.
ANNOUNCE_AFTER = 2.0
PROGRESS_EVERY = 30.0


def wait_for(predicate: Callable[[], Any], *, timeout: float, interval: float = 1.0, what: str,
             host: str = "", blocked: Callable[[], str | None] | None = None, blocked_every: float = 5.0,
             status: Callable[[], str] | None = None) -> Any:
    """Poll until predicate() returns a truthy value, and say what is awaited while it lasts.

    `blocked()` is asked every `blocked_every` seconds: a text it returns is a visible cause
    that keeps the wait from succeeding, and ends the wait at once with that cause instead of
    at the timeout. `status()` describes the current state for the progress messages. The
    error names what was awaited, for how long, and the last error or status.
    """
    where = host or "pgha"
    started = time.monotonic()
    deadline = started + timeout
    next_progress = started + ANNOUNCE_AFTER
    next_blocked = started
    announced = False
    last_error: Exception | None = None

    def detail() -> str:
        now = ""
        if status is not None:
            try:
                now = status()
            except Exception as err:  # noqa: BLE001 - a status is best effort
                now = f"status unavailable: {err}"
        parts = [p for p in (now, f"last error: {last_error}" if last_error else "") if p]
        return f" ({'; '.join(parts)})" if parts else ""

    while True:
        try:
            value = predicate()
            if value:
                if announced:
                    notify(where, f"{what}: reached after {time.monotonic() - started:.0f}s")
                return value
        except Exception as err:  # noqa: BLE001 - remembered and reported
            last_error = err
        now = time.monotonic()
        if blocked is not None and now >= next_blocked:
            next_blocked = now + blocked_every
            try:
                cause = blocked()
            except Exception:  # noqa: BLE001 - a check that fails proves nothing
                cause = None
            if cause:
                raise WaitFailed(where, what, f"stopped after {now - started:.0f}s: {cause}", cause=cause)
        if now >= deadline:
            raise WaitFailed(where, what, f"not reached within {timeout:.0f}s{detail()}")
        if now >= next_progress:
            if announced:
                notify(where, f"still waiting for {what} ({now - started:.0f}s of {timeout:.0f}s){detail()}")
            else:
                notify(where, f"waiting for {what} (up to {timeout:.0f}s){detail()}")
                announced = True
            next_progress = now + PROGRESS_EVERY
        time.sleep(interval)
