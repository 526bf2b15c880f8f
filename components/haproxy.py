"""HAProxy: one HAProxyConfig per balancer host, fronting the Patroni nodes."""

from __future__ import annotations

import pulumi

from components import specs
from components.certificates import ClusterCertificates
from components.config import ClusterConfig
from components.resources import HAProxyConfig
from components.secrets import ClusterSecrets
from components.tls_plan import tls_file_sets


class HAProxy(pulumi.ComponentResource):
    """Built in two calls: the constructor delivers the TLS files (pgha:tls), which a move to TLS
    needs before Patroni's nodes; `balance` then adds one HAProxyConfig per host once what it
    depends on (the leader) exists."""

    configs: dict[str, HAProxyConfig]

    def __init__(self, name: str, cfg: ClusterConfig, secrets: ClusterSecrets,
                 opts: pulumi.ResourceOptions | None = None, tls: ClusterCertificates | None = None) -> None:
        super().__init__("pgha:index:HAProxy", name, None, opts)
        self.cfg, self.secrets = cfg, secrets
        self.configs = {}
        self.tls_files: dict[str, list[pulumi.Resource]] = {}
        for host in cfg.with_role("haproxy"):
            self.tls_files[host.name] = []
            if tls is not None:
                # The CA file (and a client certificate) in place before `haproxy -c` and the reload.
                # A client certificate of a new CA is shown only once every Patroni trusts that CA
                # (tls.client_certificate_after).
                self.tls_files[host.name] = [
                    tls.deliver(f"{cfg.scope}-haproxy-tls-{host.name}", host, files, specs.connection(host),
                                secrets.ssh_private_key,
                                pulumi.ResourceOptions(parent=self,
                                                       depends_on=tls.client_certificate_after(files)))
                    for files in tls_file_sets(cfg, host) if files.service == "haproxy"]
        self.primary_endpoints = [f"{h.address}:{cfg.haproxy.primary_port}" for h in cfg.with_role("haproxy")]
        self.replica_endpoints = [f"{h.address}:{cfg.haproxy.replica_port}" for h in cfg.with_role("haproxy")]

    def balance(self, depends_on: list[pulumi.Resource]) -> None:
        cfg = self.cfg
        spec = specs.haproxy_spec(cfg)
        for host in cfg.with_role("haproxy"):
            props = {"connection": specs.connection(host), **spec}
            if self.secrets.ssh_private_key is not None:
                props["ssh_private_key"] = self.secrets.ssh_private_key
            self.configs[host.name] = HAProxyConfig(
                f"{cfg.scope}-haproxy-{host.name}", props,
                pulumi.ResourceOptions(parent=self, depends_on=depends_on + self.tls_files[host.name]))
        self.register_outputs({"primary": self.primary_endpoints, "replicas": self.replica_endpoints})
