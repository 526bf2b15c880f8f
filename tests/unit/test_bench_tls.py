"""B8's pure parts (TLS on ÷ TLS off): the two layouts, the REST and libpq settings a TLS stack
needs, pgha's client identity read from a stack export, the figures and their report rows.

No lab: the export and the results are made up here, shaped as `pulumi stack export
--show-secrets` and bench/scenarios.py produce them.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from bench import report
from bench.deploy import (
    STANDARD,
    STANDARD_TLS,
    cluster_config,
    lab_base_config,
    libpq_tls,
    rest_base,
    tls_client_material,
)
from bench.scenarios import EXECUTION_ORDER, SCENARIOS, TLS_VARIANTS, tls_cost_figures

SECRET_SIG = "4dabf18193072939515e22adb298388d"  # Pulumi's secret envelope marker


def _secret(value: Any) -> dict[str, str]:
    return {SECRET_SIG: "1b47061264138c4ac30d75fd1eb44270", "plaintext": json.dumps(value)}


def test_the_tls_layout_differs_from_b1s_only_by_pgha_tls() -> None:
    off = STANDARD.config(lab_base_config())
    on = STANDARD_TLS.config(lab_base_config())
    assert off["tls"] == {"enabled": False}, "the lab stack says TLS off"
    assert on["tls"] == {"enabled": True}
    assert {k: v for k, v in on.items() if k != "tls"} == {k: v for k, v in off.items() if k != "tls"}
    assert STANDARD_TLS.lab_hosts == STANDARD.lab_hosts and STANDARD_TLS.hosts == STANDARD.hosts
    assert STANDARD_TLS != STANDARD, "a TLS deployment is never reused for B1..B7, nor theirs for B8"
    assert cluster_config(on).tls.enabled and not cluster_config(off).tls.enabled
    assert [(v, layout) for v, layout in TLS_VARIANTS] == [("off", STANDARD), ("on", STANDARD_TLS)]


def test_rest_scheme_and_libpq_settings_follow_pgha_tls() -> None:
    off = cluster_config(STANDARD.config(lab_base_config()))
    on = cluster_config(STANDARD_TLS.config(lab_base_config()))
    assert rest_base(off, "10.77.0.11") == f"http://10.77.0.11:{off.patroni.restapi_port}"
    assert rest_base(on, "10.77.0.11") == f"https://10.77.0.11:{on.patroni.restapi_port}"
    assert libpq_tls(off, None) == {}, "TLS off: libpq's defaults, as B4 always connected"
    assert libpq_tls(on, "/x/ca.crt") == {"sslmode": "verify-full", "sslrootcert": "/x/ca.crt"}
    with pytest.raises(ValueError, match="CA file"):
        libpq_tls(on, None)


def _export(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"version": 3, "deployment": {"resources": list(resources)}}


def test_the_client_identity_comes_from_a_resources_tls_client() -> None:
    material = {"ca_pem": "CA", "cert_pem": "CERT", "key_pem": "KEY"}
    exported = _export(
        {"type": "pulumi:pulumi:Stack", "outputs": {"tlsCa": "CA"}},
        {"type": "pulumi-python:dynamic:Resource", "inputs": {"name": "x"}, "outputs": {"ready": True}},
        {"type": "pulumi-python:dynamic:Resource", "outputs": {"tls_client": _secret(material)}},
    )
    assert tls_client_material(exported) == material
    # A secret inside a secret (one key marked on its own) opens as well; inputs count too.
    nested = {**material, "key_pem": _secret("KEY")}
    assert tls_client_material(_export({"inputs": {"tls_client": _secret(nested)}})) == material


def test_no_client_identity_says_so() -> None:
    with pytest.raises(RuntimeError, match="pgha:tls"):
        tls_client_material(_export({"outputs": {"tls_client": None}}, {"outputs": {}}))


def _part(up_s: float, *switchovers: tuple[float, float]) -> dict[str, Any]:
    return {"up_s": up_s, "switchovers": [{"write_gap_s": gap, "demote_promote_s": dp}
                                          for gap, dp in switchovers]}


def test_tls_cost_figures_divide_on_by_off_the_switchovers_medians() -> None:
    figures = tls_cost_figures({"tls_off": _part(20.0, (1.5, 1.6), (9.0, 1.5), (1.4, 1.7)),
                                "tls_on": _part(25.0, (1.8, 2.0), (1.7, 2.1), (0.2, 1.9))})
    assert [(f["measured"], f["floor"]) for f in figures] == [(25.0, 20.0), (1.7, 1.5), (2.0, 1.6)]
    assert [round(f["ratio"], 3) for f in figures] == [1.25, 1.133, 1.25]
    assert all(f["goal"] is None and "TLS off" in f["floor_label"] for f in figures)
    assert "pulumi up" in figures[0]["name"] and "switchover" in figures[1]["name"]
    assert "median of 3 on, 3 off" in figures[1]["name"]


def test_tls_cost_figures_of_a_run_that_stopped_part_way() -> None:
    """TLS on failed after its deploy: the deploy's ratio is there, the switchovers' are not;
    one switchover measured gives its own value."""
    figures = tls_cost_figures({"tls_off": _part(20.0, (1.5, 1.6)), "tls_on": {"up_s": 30.0}})
    assert [f["ratio"] for f in figures] == [1.5, None, None]
    assert figures[1]["floor"] == 1.5 and "median of 0 on, 1 off" in figures[1]["name"]
    assert [f["ratio"] for f in tls_cost_figures({})] == [None, None, None]


def test_b8_runs_last_and_reads_after_b7() -> None:
    assert "B8" in SCENARIOS and EXECUTION_ORDER[-1] == "B8"
    figures = tls_cost_figures({"tls_off": _part(20.0, (1.5, 1.6)), "tls_on": _part(25.0, (1.8, 2.0))})
    results = {"meta": {}, "benchmarks": {
        "B8": {"id": "B8", "title": "TLS cost", "figures": figures, "details": {}, "series": {}},
        "B7": {"id": "B7", "title": "Archive lag", "figures": [], "details": {}, "series": {}}}}
    text = report.render_markdown(results)
    assert text.index("## B7") < text.index("## B8")
    row = "| B8 | pulumi up: 3 etcd+Patroni hosts + 1 HAProxy host from bare hosts, TLS on | 25.0 s | 20.0 s:"
    assert row in text
    assert "**1.25×**" in text
