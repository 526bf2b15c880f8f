"""Fixed lab settings in one place, so every module and the tests agree on them."""

from __future__ import annotations

import os
import re
from pathlib import Path

LAB_NAME = "pgha-lab"
BRIDGE = "pghabr0"
CIDR = "10.77.0.0/24"
GATEWAY = "10.77.0.1"
PREFIX_LEN = 24
SSH_USER = "pgha"
SSH_PORT = 22
# A directory of the build machine bind-mounted into every host at the same path, owned by
# the image's postgres user (same uid in every host): the lab's "shared storage" (NFS on a
# real site), e.g. for a pgBackRest repository on the Patroni nodes themselves.
SHARED_DIR = "shared"  # under the state dir
SHARED_MOUNT = "/srv/pgha-shared"

# Names become machine names and veth names ("vb-" + name must fit in 15 chars).
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,11}$")
_PGK_RE = re.compile(r"^pg([1-9][0-9]?)$")


def state_dir() -> Path:
    """Runtime state of the lab; overridable so a checkout can keep its own files."""
    return Path(os.environ.get("PGHA_LAB_DIR", "/var/lib/pgha-lab"))


def cache_dir() -> Path:
    """Image and wheelhouse caches live outside the checkout and survive `down`."""
    return Path(os.environ.get("PGHA_LAB_CACHE", "/var/cache/pgha-lab"))


def address_for(names: list[str]) -> dict[str, str]:
    """Fixed addressing: pgK -> 10.77.0.(10+K); other names get .101 and up."""
    out: dict[str, str] = {}
    nxt = 101
    for name in names:
        if not NAME_RE.match(name):
            raise ValueError(f"bad host name {name!r}: want [a-z][a-z0-9-]{{0,11}}")
        m = _PGK_RE.match(name)
        if m and int(m.group(1)) <= 89:
            out[name] = f"10.77.0.{10 + int(m.group(1))}"
        else:
            while nxt <= 254 and f"10.77.0.{nxt}" in out.values():
                nxt += 1
            if nxt > 254:
                raise ValueError("too many hosts for 10.77.0.0/24")
            out[name] = f"10.77.0.{nxt}"
            nxt += 1
    if len(set(out.values())) != len(out):
        raise ValueError(f"duplicate host names: {names}")
    return out
