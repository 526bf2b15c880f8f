"""Host keys from an OpenSSH known_hosts file (pure: text in, key out).

pulumi-command checks a host against one pinned key (`connection.hostKey`, "type base64"),
so the key comes from the stack's `pgha:ssh.knownHostsFile`, as OpenSSH would pick it: plain
and hashed (`|1|salt|hash`) host patterns, `[host]:port` for ports other than 22, `*`/`?`
wildcards and `!` negations; `@revoked` keys are refused and `@cert-authority` lines skipped.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass

# When a host has keys of several types, the one to pin. pulumi-command offers the server only
# the pinned key's algorithm (checked on the lab: "we offered: [ecdsa-sha2-nistp256], peer
# offered: [ssh-ed25519]"), so any type the host still has works; Ed25519 first, as OpenSSH.
KEY_TYPE_ORDER = (
    "ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
    "rsa-sha2-512", "rsa-sha2-256", "ssh-rsa",
)


class HostKeyError(ValueError):
    """No usable key for a host in a known_hosts file; the message says what to do."""


@dataclass(frozen=True)
class KnownKey:
    key_type: str
    key: str

    def __str__(self) -> str:
        return f"{self.key_type} {self.key}"


def host_token(address: str, port: int) -> str:
    """How known_hosts names a host: `addr`, or `[addr]:port` when the port is not 22."""
    return address if port == 22 else f"[{address}]:{port}"


def _wildcard(pattern: str, token: str) -> bool:
    """OpenSSH's host patterns know only `*` and `?` (`[` is literal, as in `[host]:port`)."""
    regex = re.escape(pattern.lower()).replace(r"\*", ".*").replace(r"\?", ".")
    return re.fullmatch(regex, token.lower()) is not None


def _hashed_match(pattern: str, token: str) -> bool:
    parts = pattern.split("|")
    if len(parts) != 4 or parts[1] != "1":
        return False
    try:
        salt, want = base64.b64decode(parts[2]), base64.b64decode(parts[3])
    except ValueError:
        return False
    return hmac.compare_digest(hmac.new(salt, token.encode(), hashlib.sha1).digest(), want)


def _matches(patterns: str, token: str) -> bool:
    """OpenSSH's rule: any positive pattern matches and no negated one does."""
    matched = False
    for pattern in patterns.split(","):
        if pattern.startswith("|"):
            matched = matched or _hashed_match(pattern, token)
        elif pattern.startswith("!"):
            if _wildcard(pattern[1:], token):
                return False
        elif _wildcard(pattern, token):
            matched = True
    return matched


def host_keys(text: str, address: str, port: int = 22) -> tuple[list[KnownKey], list[KnownKey]]:
    """(keys, revoked keys) that the file lists for a host."""
    token = host_token(address, port)
    keys: list[KnownKey] = []
    revoked: list[KnownKey] = []
    for raw in text.splitlines():
        fields = raw.split()
        if not fields or fields[0].startswith("#"):
            continue
        marker = fields.pop(0) if fields[0].startswith("@") else None
        if len(fields) < 3 or marker == "@cert-authority" or not _matches(fields[0], token):
            continue
        key = KnownKey(fields[1], fields[2])
        (revoked if marker == "@revoked" else keys).append(key)
    return keys, revoked


def pinned_host_key(text: str, address: str, port: int, source: str) -> str:
    """The one key pulumi-command is to expect from the host, as "type base64".

    `source` names the file (and the stack key that sets it) in errors.
    """
    keys, revoked = host_keys(text, address, port)
    keys = [k for k in keys if k not in revoked]
    token = host_token(address, port)
    if not keys:
        what = "only revoked keys" if revoked else "no key"
        raise HostKeyError(
            f"{source} has {what} for {token}: add the host's key after checking its fingerprint "
            f"(ssh-keyscan -p {port} {address}, then ssh-keygen -lf on the result)")
    rank = {t: i for i, t in enumerate(KEY_TYPE_ORDER)}
    return str(min(keys, key=lambda k: rank.get(k.key_type, len(rank))))
