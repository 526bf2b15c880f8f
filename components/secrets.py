"""The cluster's secrets as Pulumi secret Outputs: from config, or generated for labs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pulumi

from components.config import ClusterConfig
from components.resources import GeneratedPassword

PURPOSES = {
    "superuser": "superuserPassword",
    "replication": "replicationPassword",
    "rewind": "rewindPassword",
    "restapi": "restApiPassword",
}


@dataclass
class ClusterSecrets:
    passwords: dict[str, pulumi.Output[str]]
    role_passwords: dict[str, pulumi.Output[str]] = field(default_factory=dict)
    ssh_private_key: pulumi.Output[str] | None = None

    def patroni(self) -> pulumi.Output[dict[str, str]]:
        return pulumi.Output.secret(pulumi.Output.all(**self.passwords))


def cluster_secrets(cfg: ClusterConfig, raw: dict[str, Any],
                    parent: pulumi.Resource | None = None) -> ClusterSecrets:
    passwords: dict[str, pulumi.Output[str]] = {}
    for purpose, key in PURPOSES.items():
        if raw.get(key):
            passwords[purpose] = pulumi.Output.secret(str(raw[key]))
        else:  # validation allowed this only with generatePasswords on a non-production stack
            passwords[purpose] = GeneratedPassword(
                f"{cfg.scope}-{purpose}-password", purpose,
                pulumi.ResourceOptions(parent=parent)).value
    roles = {name: pulumi.Output.secret(str(value))
             for name, value in (raw.get("rolePasswords") or {}).items()}
    for role in cfg.roles:
        if role.login and role.name not in roles and cfg.generate_passwords:
            roles[role.name] = GeneratedPassword(
                f"{cfg.scope}-role-{role.name}-password", f"role-{role.name}",
                pulumi.ResourceOptions(parent=parent)).value
    key = pulumi.Output.secret(str(raw["sshPrivateKey"])) if raw.get("sshPrivateKey") else None
    return ClusterSecrets(passwords=passwords, role_passwords=roles, ssh_private_key=key)
