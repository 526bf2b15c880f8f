"""pgha: a highly available PostgreSQL cluster (etcd + Patroni + HAProxy) from stack config."""

import pulumi

from components.cluster import PostgresHaCluster
from components.config import load_cluster_config
from components.stack_config import read_namespace
from components.validation import ConfigError

raw, secret_keys = read_namespace("pgha")
try:
    config = load_cluster_config(raw, secret_keys)
except ConfigError as err:
    # Before any resource is registered: nothing is touched on any host.
    raise pulumi.RunError(str(err)) from None

cluster = PostgresHaCluster(config, raw)

pulumi.export("primary", [f"postgresql://{addr}" for addr in cluster.haproxy.primary_endpoints])
pulumi.export("replicas", [f"postgresql://{addr}" for addr in cluster.haproxy.replica_endpoints])
pulumi.export("members", cluster.patroni.members)
if cluster.backup is not None:
    # Last full/diff backup and their age, WAL archiving health (read on every up and refresh).
    pulumi.export("backup", cluster.backup.status)
if config.generate_passwords and not raw.get("superuserPassword"):
    # A lab has no secret store: `pulumi stack output superuserPassword --show-secrets`.
    pulumi.export("superuserPassword", cluster.secrets.passwords["superuser"])
if cluster.tls is not None:
    # pgha:tls: the CA bundle clients trust (`pulumi stack output tlsCa > pgha-ca.crt`) and
    # when each certificate expires.
    pulumi.export("tlsCa", cluster.tls.trust_pem)
    pulumi.export("certificateExpiry", cluster.tls.expiry)
_ssl = " sslmode=verify-full sslrootcert=pgha-ca.crt" if cluster.tls is not None else ""
pulumi.export("psql", [
    f"psql 'host={addr.split(':')[0]} port={addr.split(':')[1]} user=postgres dbname=postgres{_ssl}'"
    for addr in cluster.haproxy.primary_endpoints
])
