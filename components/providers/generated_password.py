"""GeneratedPassword: a random password kept (encrypted) in the stack state.

For lab stacks only (pgha:generatePasswords); production stacks set every
password with `pulumi config set --secret`, which validation enforces.
"""

from __future__ import annotations

import secrets
from typing import Any

from pulumi.dynamic import CreateResult, DiffResult, ResourceProvider


class GeneratedPasswordProvider(ResourceProvider):
    serialize_as_secret_always = False

    def create(self, props: dict[str, Any]) -> CreateResult:
        value = secrets.token_urlsafe(int(props.get("length", 24)))
        return CreateResult(id_=f"password/{props['purpose']}", outs={**props, "value": value})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [k for k in ("purpose", "length") if olds.get(k) != news.get(k)]
        return DiffResult(changes=bool(changed), replaces=changed)
