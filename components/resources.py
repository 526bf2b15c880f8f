"""The dynamic resource types, each bound to its provider.

Type tokens are explicit (module/name) so that the preview reads
`pgha:EtcdMember`, `pgha:PatroniNode`... rather than a generic Resource.
"""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi.dynamic import Resource

from components.providers.database_role import DatabaseRoleProvider
from components.providers.dynamic_config import DynamicConfigProvider, LeaderProvider
from components.providers.etcd_member import EtcdMemberProvider
from components.providers.generated_password import GeneratedPasswordProvider
from components.providers.haproxy_config import HAProxyConfigProvider
from components.providers.host_cleanup import PatroniHostCleanupProvider
from components.providers.membership_guard import MembershipGuardProvider
from components.providers.patroni_bootstrap import PatroniBootstrapProvider
from components.providers.patroni_cluster import PatroniClusterProvider
from components.providers.patroni_node import PatroniNodeProvider
from components.providers.tls_certificates import CertificateAuthorityProvider, CertificateProvider
from components.providers.tls_files import TlsFilesProvider
from components.providers.tls_move import EtcdTlsMoveProvider, PatroniTlsMoveProvider
from components.providers.tls_trust import TlsTrustProvider

# tls_client: pgha's own TLS client identity (pgha:tls), its key included.
SECRET_OUTPUTS = ["secrets", "ssh_private_key", "tls_client"]


def _opts(opts: pulumi.ResourceOptions | None,
          extra_secret: list[str] | None = None) -> pulumi.ResourceOptions:
    secret = pulumi.ResourceOptions(additional_secret_outputs=SECRET_OUTPUTS + (extra_secret or []))
    return pulumi.ResourceOptions.merge(secret, opts) if opts else secret


class EtcdMember(Resource, module="pgha", name="EtcdMember"):
    member_id: pulumi.Output[str]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        super().__init__(EtcdMemberProvider(), name, {"member_id": None, **props}, _opts(opts))


class PatroniHostCleanup(Resource, module="pgha", name="PatroniHostCleanup"):
    """Removes a host's Patroni install when deleted (components/providers/host_cleanup.py)."""

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        super().__init__(PatroniHostCleanupProvider(), name, props, _opts(opts))


class PatroniCluster(Resource, module="pgha", name="PatroniCluster"):
    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        super().__init__(PatroniClusterProvider(), name, props, _opts(opts))


class PatroniNode(Resource, module="pgha", name="PatroniNode"):
    role: pulumi.Output[str]
    timeline: pulumi.Output[int]
    patroni_version: pulumi.Output[str]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        outs = {"role": None, "timeline": None, "patroni_version": None}
        super().__init__(PatroniNodeProvider(), name, {**outs, **props}, _opts(opts))


class PatroniBootstrap(Resource, module="pgha", name="PatroniBootstrap"):
    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        super().__init__(PatroniBootstrapProvider(), name, props, _opts(opts))


class HAProxyConfig(Resource, module="pgha", name="HAProxyConfig"):
    primary_at_apply: pulumi.Output[str]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        super().__init__(HAProxyConfigProvider(), name, {"primary_at_apply": None, **props}, _opts(opts))


class DatabaseRole(Resource, module="pgha", name="DatabaseRole"):
    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        super().__init__(DatabaseRoleProvider(), name, props, _opts(opts))


class GeneratedPassword(Resource, module="pgha", name="GeneratedPassword"):
    value: pulumi.Output[str]

    def __init__(self, name: str, purpose: str, opts: pulumi.ResourceOptions | None = None):
        super().__init__(GeneratedPasswordProvider(), name, {"purpose": purpose, "length": 24, "value": None},
                         _opts(opts, ["value"]))


class MembershipGuard(Resource, module="pgha", name="MembershipGuard"):
    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        super().__init__(MembershipGuardProvider(), name, props, opts)


class PatroniDynamicConfig(Resource, module="pgha", name="PatroniDynamicConfig"):
    pending_restart: pulumi.Output[list[str]]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        super().__init__(DynamicConfigProvider(), name, {"pending_restart": None, "restarted": None, **props},
                         _opts(opts))


class PatroniLeader(Resource, module="pgha", name="PatroniLeader"):
    current_leader: pulumi.Output[str]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        super().__init__(LeaderProvider(), name, {"current_leader": None, **props}, _opts(opts))


# Key material: the private keys (and the signing CA's key a certificate is issued with) are
# secret outputs, kept encrypted in the state.
CA_OUTPUTS = {"cert_pem": None, "key_pem": None, "trust_pem": None, "previous_cert_pem": None,
              "not_after": None, "serial": None, "fingerprint": None, "issuer": None, "rotated": None}
CERT_OUTPUTS = {"cert_pem": None, "key_pem": None, "not_after": None, "serial": None, "fingerprint": None,
                "issuer": None}


class TlsCertificateAuthority(Resource, module="pgha", name="TlsCertificateAuthority"):
    """The cluster CA the stack generates (pgha:tls.source: generated)."""

    cert_pem: pulumi.Output[str]
    key_pem: pulumi.Output[str]
    trust_pem: pulumi.Output[str]
    not_after: pulumi.Output[str]
    fingerprint: pulumi.Output[str]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        super().__init__(CertificateAuthorityProvider(), name, {**CA_OUTPUTS, **props},
                         _opts(opts, ["key_pem"]))


class TlsCertificate(Resource, module="pgha", name="TlsCertificate"):
    """One host's (or pgha's client) certificate and key, issued with the cluster CA."""

    cert_pem: pulumi.Output[str]
    key_pem: pulumi.Output[str]
    not_after: pulumi.Output[str]
    fingerprint: pulumi.Output[str]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        super().__init__(CertificateProvider(), name, {**CERT_OUTPUTS, **props},
                         _opts(opts, ["key_pem", "ca_key_pem"]))


class TlsFiles(Resource, module="pgha", name="TlsFiles"):
    """The certificate files one service reads on one host (components/providers/tls_files.py)."""

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        super().__init__(TlsFilesProvider(), name, {"in_place": None, "drift": None, **props},
                         _opts(opts, ["contents"]))


class TlsTrust(Resource, module="pgha", name="TlsTrust"):
    """The CA bundle every host trusts, changed everywhere before a new certificate is used
    (components/providers/tls_trust.py)."""

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        super().__init__(TlsTrustProvider(), name, props, _opts(opts))


class EtcdTlsMove(Resource, module="pgha", name="EtcdTlsMove"):
    """A plaintext cluster's etcd moving to TLS, before any member's update; nothing on a new or
    TLS cluster (components/providers/tls_move.py). `found`: new, tls or moving."""

    found: pulumi.Output[str]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        super().__init__(EtcdTlsMoveProvider(), name, {"found": None, **props}, _opts(opts))


class PatroniTlsMove(Resource, module="pgha", name="PatroniTlsMove"):
    """The Patroni nodes (and HAProxy's checks) of a cluster whose etcd moved to TLS, before any
    node's update (components/providers/tls_move.py)."""

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        super().__init__(PatroniTlsMoveProvider(), name, props, _opts(opts))
