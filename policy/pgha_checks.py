"""pgha's organisational rules, as pure functions: the stack's resources in, violations out.

The program's validation (components/validation.py) refuses what cannot work; these rules refuse
what works but is unwise for an organisation. They read what the engine hands a stack policy: every
resource of the planned stack with its outputs. pgha's providers return their inputs as outputs
(providers/base.py, public()), and in a preview a planned create or update shows its new inputs, so
the rules read inputs that the provider diffs (never a CREATE_ONLY one, which could be stale).
Each message names the stack config key to change and says how.

No Pulumi import here, so the project's own .venv can test these functions; __main__.py wires
them into pulumi_policy in the pack's virtualenv.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# pulumi.dynamic.Resource subclasses declared with module="pgha" (components/resources.py).
TYPE_PREFIX = "pulumi-python:dynamic/pgha:"
ETCD_MEMBER = f"{TYPE_PREFIX}EtcdMember"
PATRONI_NODE = f"{TYPE_PREFIX}PatroniNode"
HAPROXY_CONFIG = f"{TYPE_PREFIX}HAProxyConfig"
DYNAMIC_CONFIG = f"{TYPE_PREFIX}PatroniDynamicConfig"

PRODUCTION = "production"
NON_PRODUCTION = "non-production"
EVERY_STACK = "every stack"

HOST_CONNECTIONS = ("host", "hostssl", "hostnossl", "hostgssenc", "hostnogssenc")


@dataclass(frozen=True)
class Resource:
    type: str
    urn: str
    props: Mapping[str, Any]

    @property
    def name(self) -> str:
        """The resource's own name (the last URN segment), e.g. pg-prod-node-prod-db1."""
        return self.urn.rsplit("::", 1)[-1]

    @property
    def host(self) -> str:
        """The pgha host the resource runs on: its `name` input, else its SSH target."""
        name = self.props.get("name")
        if isinstance(name, str):
            return name
        connection = self.props.get("connection") or {}
        return str(connection.get("host", self.name))


@dataclass(frozen=True)
class Violation:
    message: str
    urn: str | None = None


class Stack:
    def __init__(self, resources: Iterable[Resource]) -> None:
        self.resources = list(resources)

    def of_type(self, type_: str) -> list[Resource]:
        return [r for r in self.resources if r.type == type_]


def _hosts(resources: list[Resource]) -> str:
    return ", ".join(sorted(r.host for r in resources)) or "none"


def patroni_nodes(stack: Stack) -> list[Violation]:
    nodes = stack.of_type(PATRONI_NODE)
    if len(nodes) >= 3:
        return []
    return [Violation(
        f"pgha:hosts: {len(nodes)} host(s) have the patroni role ({_hosts(nodes)}); a production stack "
        f"needs at least 3, so that with one node down there is still a leader and a replica to fail "
        f"over to. Give the patroni role to {3 - len(nodes)} more host(s) in pgha:hosts.")]


def etcd_odd_members(stack: Stack) -> list[Violation]:
    members = stack.of_type(ETCD_MEMBER)
    count = len(members)
    if count == 0 or count % 2:
        return []
    return [Violation(
        f"pgha:hosts: {count} hosts have the etcd role ({_hosts(members)}); {count} members tolerate "
        f"{(count - 1) // 2} failure(s), no more than {count - 1} would, and a network split in halves "
        f"leaves neither half a quorum. Add or remove the etcd role on one host for an odd count.")]


def _dynamic_configs(stack: Stack) -> list[Resource]:
    return stack.of_type(DYNAMIC_CONFIG)


def synchronous_mode(stack: Stack) -> list[Violation]:
    return [Violation(
        "pgha:dcs.synchronousMode is false: a failover may promote a replica that has not received the "
        "leader's last acknowledged commits, and those transactions are lost. Set "
        "pgha:dcs.synchronousMode: true.", config.urn)
        for config in _dynamic_configs(stack)
        if (config.props.get("dcs") or {}).get("synchronous_mode") is not True]


def haproxy_redundancy(stack: Stack) -> list[Violation]:
    balancers = stack.of_type(HAPROXY_CONFIG)
    if len(balancers) >= 2:
        return []
    return [Violation(
        f"pgha:hosts: {len(balancers)} host(s) have the haproxy role ({_hosts(balancers)}); when it fails, "
        f"clients lose the database although Patroni still has a leader. Give the haproxy role to a "
        f"second host in pgha:hosts (and point clients at both, e.g. through a virtual IP or DNS).")]


def keep_data_on_destroy(stack: Stack) -> list[Violation]:
    discarding = [n for n in stack.of_type(PATRONI_NODE) if n.props.get("keep_data_on_destroy") is False]
    if not discarding:
        return []
    return [Violation(
        f"pgha:postgresql.keepDataOnDestroy is false: `pulumi destroy`, or removing a host from "
        f"pgha:hosts, deletes that node's PostgreSQL data directory ({_hosts(discarding)}). Remove the "
        f"key (the default is true) and delete data directories by hand when you mean to.")]


def open_network(line: str) -> str | None:
    """The network of a pg_hba host line if it admits every address (0.0.0.0/0, ::/0, `all`)."""
    words = line.split()
    if len(words) < 5 or words[0] not in HOST_CONNECTIONS:
        return None
    address = words[3]
    if address == "all":
        return "all"
    try:
        if "/" not in address and len(words) >= 6:
            # The address-and-netmask form: host db user 0.0.0.0 0.0.0.0 method
            address = f"{address}/{ipaddress.ip_address(words[4])}"
        network = ipaddress.ip_network(address, strict=False)
    except ValueError:
        return None  # a host name, samehost, samenet...
    return str(network) if network.prefixlen == 0 else None


def hba_lines(value: Any) -> list[str]:
    """A PatroniNode's pg_hba input: a list of lines, or lines keyed by what they are for."""
    if isinstance(value, Mapping):
        return [line for line in value.values() if isinstance(line, str)]
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [line for line in value if isinstance(line, str)]
    return []


def client_cidrs(stack: Stack) -> list[Violation]:
    """One violation per offending pg_hba line (every Patroni node carries the same lines)."""
    seen: dict[str, str] = {}
    for node in stack.of_type(PATRONI_NODE):
        for line in hba_lines(node.props.get("pg_hba")):
            network = open_network(line)
            if network is not None:
                seen.setdefault(" ".join(line.split()), network)
    return [Violation(
        f"pgha:clientCidrs (or pgha:pgHba) admits every address: pg_hba line '{line}' matches {network}. "
        f"List the client networks instead (e.g. 10.20.0.0/16); a password is then not the only "
        f"thing between the internet and the database.")
        for line, network in seen.items()]


def restart_policy(stack: Stack) -> list[Violation]:
    return [Violation(
        f"pgha:restartPolicy is {config.props.get('restart_policy')!r}: a parameter change that needs a "
        f"restart stays pending on every node until someone restarts them by hand. Set "
        f"pgha:restartPolicy: rolling (the default): replicas restart one at a time, then one "
        f"switchover, then the former leader.", config.urn)
        for config in _dynamic_configs(stack)
        if config.props.get("restart_policy", "rolling") != "rolling"]


@dataclass(frozen=True)
class Rule:
    name: str
    description: str
    level: str  # the default enforcement level: "mandatory" or "advisory"
    scope: str  # PRODUCTION, NON_PRODUCTION or EVERY_STACK
    check: Callable[[Stack], list[Violation]]

    def applies(self, production: bool) -> bool:
        return self.scope == EVERY_STACK or (self.scope == PRODUCTION) == production


# A rule that is mandatory in production and advisory elsewhere is two policies: Pulumi gives each
# policy one enforcement level per run, and a per-stack policy config can still change either.
RULES: tuple[Rule, ...] = (
    Rule("production-patroni-nodes", "Production stacks run at least 3 Patroni nodes.",
         "mandatory", PRODUCTION, patroni_nodes),
    Rule("production-etcd-odd-members", "Production stacks run an odd number of etcd members.",
         "mandatory", PRODUCTION, etcd_odd_members),
    Rule("etcd-odd-members", "Stacks run an odd number of etcd members.",
         "advisory", NON_PRODUCTION, etcd_odd_members),
    Rule("production-synchronous-mode", "Production stacks use Patroni's synchronous mode.",
         "advisory", PRODUCTION, synchronous_mode),
    Rule("production-haproxy-redundancy", "Production stacks run HAProxy on at least 2 hosts.",
         "advisory", PRODUCTION, haproxy_redundancy),
    Rule("production-keep-data-on-destroy", "Production stacks keep PostgreSQL data on destroy.",
         "mandatory", PRODUCTION, keep_data_on_destroy),
    Rule("keep-data-on-destroy", "Stacks keep PostgreSQL data on destroy.",
         "advisory", NON_PRODUCTION, keep_data_on_destroy),
    Rule("client-cidrs-not-open", "pg_hba admits listed client networks, not every address.",
         "mandatory", EVERY_STACK, client_cidrs),
    Rule("production-rolling-restarts", "Production stacks restart nodes for parameter changes (rolling).",
         "advisory", PRODUCTION, restart_policy),
)


def evaluate(resources: Iterable[Resource], production: bool) -> dict[str, list[Violation]]:
    """Every applicable rule's violations, by rule name (for tests and dry runs)."""
    stack = Stack(resources)
    return {rule.name: rule.check(stack) for rule in RULES if rule.applies(production)}
