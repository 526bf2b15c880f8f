"""Render the files pgha writes on hosts from templates/ (pure: text in, text out)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jinja2

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


def _quote(value: Any) -> str:
    """Quote a scalar for YAML; JSON strings are valid YAML and escape everything."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    # ensure_ascii=False: PyYAML does not rejoin JSON's surrogate-pair escapes.
    return json.dumps(str(value), ensure_ascii=False)


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    import jinja2  # on first render: a preview imports the providers but renders nothing

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["q"] = _quote
    return env


def render(template: str, **context: Any) -> str:
    return _environment().get_template(template).render(**context)


def patroni_yml(spec: dict[str, Any], secrets: dict[str, str]) -> str:
    from components.specs import hba_lines

    return render("patroni.yml.j2", **{**spec, "tls": spec.get("tls"), "secrets": secrets,
                                       "pg_hba": hba_lines(spec["pg_hba"])})


def patroni_unit(spec: dict[str, Any]) -> str:
    return render("patroni.service.j2", **spec)


def etcd_unit_drop_in(spec: dict[str, Any]) -> str:
    """/etc/systemd/system/etcd.service.d/pgha.conf: start after the network, retry a failed start."""
    return render("etcd-service-pgha.conf.j2", **spec)


def etcd_env(spec: dict[str, Any], initial_cluster: str, state: str) -> str:
    """/etc/default/etcd; https with client certificates when the spec has `tls` (pgha:tls)."""
    tls = spec.get("tls")
    scheme = "https" if tls else "http"
    return render(
        "etcd.env.j2",
        initial_cluster=initial_cluster,
        initial_cluster_state=state,
        scheme=scheme,
        peer_url=f"{scheme}://{spec['address']}:{spec['peer_port']}",
        client_url=f"{scheme}://{spec['address']}:{spec['client_port']}",
        **{**spec, "tls": tls},
    )


def haproxy_cfg(spec: dict[str, Any]) -> str:
    return render("haproxy.cfg.j2", **{**spec, "tls": spec.get("tls")})
