"""Stored inputs of older pgha versions, read in today's shape (pure).

A stack deployed by an earlier pgha keeps its old inputs and outputs in the state
until a resource is next updated. Providers read every stored `olds` through these
functions, so an upgraded program compares like with like: a stack that did not
change is a no-op (no update, no host touched), and a real change is applied from
the new shape.

Shapes handled here (the first pgha release kept them):
- PatroniNode `pg_hba`: a list of lines (now a map keyed by what each line is for),
  compared by its lines;
- HAProxyConfig `servers`: a list of {name, address, pg_port, api_port} (now one map
  per backend, `primary_servers` and `replica_servers`);
- PatroniDynamicConfig `dcs`: nested `postgresql.{use_pg_rewind, use_slots, parameters}`
  plus a `restart_required` copy of some parameters (now a flat `dcs` and the
  parameters split into `parameters_reload` and `parameters_restart`).
"""

from __future__ import annotations

from typing import Any

from components import specs


def same_pg_hba(old: dict[str, str] | list[str] | None, new: dict[str, str] | list[str] | None) -> bool:
    """Whether a node's pg_hba is unchanged. Keyed maps compare exactly; a list stored by
    an older pgha compares by its lines, in any order (the generated lines each match one
    address or socket, so their order never decided a connection)."""
    if isinstance(old, list) and isinstance(new, dict):
        return sorted(_normalised(old)) == sorted(_normalised(specs.hba_lines(new)))
    return old == new


def _normalised(lines: list[str]) -> list[str]:
    return [" ".join(line.split()) for line in lines]


def haproxy_config(props: dict[str, Any]) -> dict[str, Any]:
    servers = props.get("servers")
    if not isinstance(servers, list):
        return props
    maxconn = int(props.get("maxconn", 150))
    entries = {s["name"]: (f"{s['address']}:{int(s['pg_port'])} maxconn {maxconn} "
                           f"check port {int(s['api_port'])}") for s in servers}
    upgraded = {k: v for k, v in props.items() if k not in ("servers", "maxconn")}
    return {**upgraded, "primary_servers": entries, "replica_servers": dict(entries)}


def dynamic_config(props: dict[str, Any]) -> dict[str, Any]:
    dcs = props.get("dcs")
    if not isinstance(dcs, dict) or "postgresql" not in dcs:
        return props
    pg = dcs.get("postgresql") or {}
    flat = {k: v for k, v in dcs.items() if k != "postgresql"}
    flat.update({k: pg[k] for k in ("use_pg_rewind", "use_slots") if k in pg})
    reload, restart = specs.split_parameters(pg.get("parameters") or {})
    upgraded = {k: v for k, v in props.items() if k not in ("dcs", "restart_required")}
    return {**upgraded, "dcs": flat, "parameters_reload": reload, "parameters_restart": restart,
            "operator_parameters": props.get("operator_parameters", [])}
