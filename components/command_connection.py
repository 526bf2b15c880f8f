"""How pulumi-command resources reach a host: the same SSH settings as the dynamic providers.

The host key is pinned from the stack's known_hosts file (`pgha:ssh.knownHostsFile`): never
left out, since pulumi-command then accepts any key. The private key is a secret Output (the
secret `pgha:sshPrivateKey`, or the contents of `pgha:ssh.privateKeyFile`), and the bastion,
when the stack has one, is the connection's `proxy`, with its own pinned key.

A preview of a machine that lacks the files (a pull request's CI job: it has the state and the
passphrase, no host access) still works: there the values it cannot read are unknown, which
the engine treats as unchanged. An `up` refuses to start without them, naming the stack key.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import pulumi
from pulumi_command import remote

from components.config import Host
from components.known_hosts import HostKeyError, pinned_host_key


class HostAccessError(pulumi.RunError):
    """A file the connection needs is missing or has no key for the host."""


def _known(value: Any) -> Awaitable[Any]:
    async def get() -> Any:
        return value

    return get()


def unknown_secret() -> pulumi.Output[Any]:
    """A value a preview cannot know (the engine shows no change for it)."""
    return pulumi.Output(set(), _known(None), _known(False), _known(True))


@dataclass(frozen=True)
class FileReader:
    """Reads the files a connection names; in a preview a missing file yields None."""

    dry_run: bool

    def read(self, path: str, key: str, what: str) -> str | None:
        full = os.path.expanduser(path)
        try:
            with open(full, encoding="utf-8") as f:
                return f.read()
        except OSError as err:
            if self.dry_run:
                pulumi.log.info(f"pgha: {key} ({full}) is not readable here: the preview shows "
                                f"{what} as unchanged")
                return None
            raise HostAccessError(f"{key}: cannot read {full}: {err.strerror}") from None

    def directory(self, path: str, key: str, what: str) -> bool:
        """Whether a directory is there; missing at `up` is an error naming the stack key."""
        if os.path.isdir(path):
            return True
        if self.dry_run:
            pulumi.log.info(f"pgha: {key} ({path}) is not here: the preview shows {what} as unchanged")
            return False
        raise HostAccessError(f"{key}: {path} is not a directory on this machine")


def _host_key(reader: FileReader, address: str, port: int, known_hosts: str,
              key: str) -> pulumi.Input[str]:
    text = reader.read(known_hosts, key, "host keys")
    if text is None:
        return unknown_secret()
    try:
        return pinned_host_key(text, address, port, f"{key} ({os.path.expanduser(known_hosts)})")
    except HostKeyError as err:
        raise HostAccessError(str(err)) from None


def private_key(host: Host, secret_key: pulumi.Output[str] | None, reader: FileReader,
                key_prefix: str) -> pulumi.Input[str]:
    if secret_key is not None:
        return secret_key
    assert host.ssh.private_key_file  # validated: a key file or the secret
    text = reader.read(host.ssh.private_key_file, f"{key_prefix}.privateKeyFile", "the SSH key")
    return unknown_secret() if text is None else pulumi.Output.secret(text)


def connection_args(host: Host, secret_key: pulumi.Output[str] | None, reader: FileReader,
                    key_prefix: str = "pgha:ssh") -> remote.ConnectionArgs:
    """`key_prefix` is the stack key errors name (`pgha:ssh`, or a host's `pgha:hosts[i].ssh`)."""
    ssh = host.ssh
    known_key = f"{key_prefix}.knownHostsFile"
    key = private_key(host, secret_key, reader, key_prefix)
    proxy = None
    if ssh.bastion:
        b = ssh.bastion
        proxy = remote.ProxyConnectionArgs(
            host=b.address, port=b.port, user=b.user, private_key=key,
            host_key=_host_key(reader, b.address, b.port, ssh.known_hosts_file, known_key))
    return remote.ConnectionArgs(
        host=host.address, port=ssh.port, user=ssh.user, private_key=key,
        host_key=_host_key(reader, host.address, ssh.port, ssh.known_hosts_file, known_key),
        proxy=proxy)
