"""Read every ``pgha:*`` key of the stack, so that unknown keys can be reported.

Pulumi's public Config API reads one known key at a time; catching typos needs
the whole set, which the runtime keeps in ``pulumi.runtime.config``.
"""

from __future__ import annotations

import json
from typing import Any

from pulumi.runtime import config as runtime_config


def _parse(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def read_namespace(namespace: str = "pgha") -> tuple[dict[str, Any], set[str]]:
    """Return ({key: value}, {secret keys}) for one config namespace, keys without it."""
    everything = runtime_config.CONFIG.get() or runtime_config.get_config_env()
    prefix = f"{namespace}:"
    values = {k[len(prefix):]: _parse(v) for k, v in everything.items() if k.startswith(prefix)}
    secrets = {k for k in values if runtime_config.is_config_secret(prefix + k)}
    return values, secrets
