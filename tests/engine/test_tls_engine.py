"""pgha:tls's key material through the real Pulumi CLI (local backend, no hosts): the CA and the
per-host certificates are created by `up`, verify against the stack's trust bundle, are kept in
the state with every private key encrypted, and are renewed as a diff (a moved host; an expiring
certificate) that the preview shows before `up` applies it."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from components import tls
from review.plan import build_plan
from review.preview import parse_preview
from tests.conftest import ROOT, PulumiCli, fixture_stack
from tests.unit.configs import base_raw, set_path

pytestmark = pytest.mark.engine
FIXTURE = ROOT / "tests" / "fixtures" / "engine-tls"
CERTS = ["pg1-etcd", "pg1-patroni", "pg2-etcd", "pg2-patroni", "pg3-etcd", "pg3-patroni", "pgha-client"]
TYPE = "pulumi-python:dynamic/pgha:TlsCertificate"
CA_TYPE = "pulumi-python:dynamic/pgha:TlsCertificateAuthority"


def _raw() -> dict[str, Any]:
    raw = base_raw()
    for name in ("superuserPassword", "replicationPassword", "rewindPassword", "restApiPassword",
                 "rolePasswords"):
        raw.pop(name)
    raw["generatePasswords"] = True  # no secret in config: every secret in the state is key material
    return raw


def _write_config(work: Path, raw: dict[str, Any]) -> None:
    stack_file = work / "Pulumi.test.yaml"
    doc = yaml.safe_load(stack_file.read_text()) or {}
    doc["config"] = {f"pgha:{k}": v for k, v in raw.items()}
    stack_file.write_text(yaml.safe_dump(doc, sort_keys=False))


@pytest.fixture()
def project(tmp_path: Path, pulumi_bin: Path) -> tuple[PulumiCli, Path]:
    cli, work = fixture_stack(FIXTURE, tmp_path)
    cli.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), cli.env.get("PYTHONPATH")]))
    _write_config(work, _raw())
    return cli, work


def _resources(cli: PulumiCli, *flags: str) -> list[dict[str, Any]]:
    return json.loads(cli.run("stack", "export", *flags).stdout)["deployment"]["resources"]


def _plain(value: Any) -> Any:
    """A value of `stack export --show-secrets`: secrets are {sig, plaintext: <JSON>}."""
    if isinstance(value, dict) and "plaintext" in value:
        return json.loads(value["plaintext"])
    return value


def _steps(cli: PulumiCli) -> dict[str, str]:
    """name -> op of every step a preview plans (same, create, replace, update...)."""
    preview = json.loads(cli.run("preview", "--json").stdout)
    return {s["urn"].rsplit("::", 1)[1]: s["op"] for s in preview.get("steps", [])}


def test_certificates_are_stack_resources_with_encrypted_keys(project: tuple[PulumiCli, Path]) -> None:
    cli, _ = project
    preview = cli.run("preview", "--diff")
    assert "+ 10 to create" in preview.stdout, preview.stdout  # stack, component, CA, 7 certificates
    cli.run("up", "--yes")

    outputs = json.loads(cli.run("stack", "output", "--json").stdout)
    assert sorted(outputs["certificates"]) == CERTS
    assert sorted(outputs["expiry"]) == ["ca", *CERTS]
    now = tls.utcnow()
    for name, pem in outputs["certificates"].items():
        info = tls.inspect(pem)
        assert 364 <= info.days_left(now) <= 365, (name, info.not_after)
        assert dt.datetime.fromisoformat(outputs["expiry"][name]) == info.not_after
        tls.verify(pem, outputs["trust"], now, client=True)
    tls.verify(outputs["certificates"]["pg2-patroni"], outputs["trust"], now, server_name="10.77.0.12")
    tls.verify(outputs["certificates"]["pg3-etcd"], outputs["trust"], now, server_name="pg3")
    assert tls.inspect(outputs["trust"]).is_ca

    exported = cli.run("stack", "export").stdout
    assert "PRIVATE KEY" not in exported, "a private key is in the state in plaintext"
    resources = _resources(cli)
    assert sorted(r["type"] for r in resources if r["type"] in (TYPE, CA_TYPE)) == [TYPE] * 7 + [CA_TYPE]
    for res in resources:
        if res["type"] in (TYPE, CA_TYPE):
            assert "ciphertext" in json.dumps(res["outputs"]["key_pem"]), res["urn"]
            assert "BEGIN CERTIFICATE" in res["outputs"]["cert_pem"], "certificates stay readable"
        if res["type"] == TYPE:
            assert "ciphertext" in json.dumps(res["outputs"]["ca_key_pem"]), res["urn"]
            assert "ciphertext" in json.dumps(res["inputs"]["ca_key_pem"]), res["urn"]
    # With the passphrase the keys are there, and each one is its certificate's.
    decrypted = {r["urn"].rsplit("::", 1)[1]: r["outputs"] for r in _resources(cli, "--show-secrets")
                 if r["type"] == TYPE}
    assert len(decrypted) == 7
    for name, outs in decrypted.items():
        assert tls.key_matches(outs["cert_pem"], _plain(outs["key_pem"])), name

    assert set(_steps(cli).values()) == {"same"}, "a second preview changes nothing"
    cli.run("destroy", "--yes")


def test_a_moved_host_and_an_expiring_certificate_are_renewed(project: tuple[PulumiCli, Path]) -> None:
    cli, work = project
    cli.run("up", "--yes")
    before = json.loads(cli.run("stack", "output", "--json").stdout)["certificates"]

    # A new address: both of pg2's certificates are issued again, nothing else moves.
    raw = _raw()
    set_path(raw, "hosts[1].address", "10.77.0.22")
    _write_config(work, raw)
    steps = _steps(cli)
    assert {n for n, op in steps.items() if op == "replace"} == {"pgha-lab-tls-pg2-etcd",
                                                                 "pgha-lab-tls-pg2-patroni"}, steps
    diff = cli.run("preview", "--diff").stdout
    assert "10.77.0.22" in diff, diff
    cli.run("up", "--yes")
    after = json.loads(cli.run("stack", "output", "--json").stdout)
    assert tls.inspect(after["certificates"]["pg2-patroni"]).ip_addresses == ("10.77.0.22", "10.77.0.14",
                                                                             "127.0.0.1")
    assert after["certificates"]["pg1-patroni"] == before["pg1-patroni"]

    # An expiring certificate: put one in the state that has 10 days left (signed by the
    # stack's CA, so expiry is the only reason), and the preview plans its replacement.
    secret_state = _resources(cli, "--show-secrets")
    ca = next(r["outputs"] for r in secret_state if r["type"] == CA_TYPE)
    old = next(r["outputs"] for r in secret_state if r["urn"].endswith("::pgha-lab-tls-pg3-patroni"))
    request = tls.CertificateRequest(old["common_name"], tuple(old["dns_names"]), tuple(old["ip_addresses"]),
                                     server=True, client=True, validity_days=365)
    aging = tls.issue(tls.KeyAndCertificate(_plain(ca["key_pem"]), ca["cert_pem"]), request,
                      now=tls.utcnow() - dt.timedelta(days=355))
    state = json.loads(cli.run("stack", "export").stdout)
    for res in state["deployment"]["resources"]:
        if res["urn"].endswith("::pgha-lab-tls-pg3-patroni"):
            # Public; the encrypted key stays as it was (the diff reads the certificate only).
            res["outputs"]["cert_pem"] = aging.cert_pem
            res["outputs"]["not_after"] = tls.inspect(aging.cert_pem).not_after.isoformat()
    cli.run("stack", "import", input=json.dumps(state))

    steps = _steps(cli)
    assert {n for n, op in steps.items() if op == "replace"} == {"pgha-lab-tls-pg3-patroni"}, steps
    text = cli.run("preview", "--json").stdout
    step = next(s for s in json.loads(text)["steps"] if s["urn"].endswith("::pgha-lab-tls-pg3-patroni"))
    assert step.get("replaceReasons") == ["not_after"], step
    # The review comment says it in words.
    assert "TLS: certificate pg3-patroni issued again: it expires within pgha:tls.renewBeforeDays" in (
        build_plan(parse_preview(text)).lines)
    cli.run("up", "--yes")
    renewed = json.loads(cli.run("stack", "output", "--json").stdout)["certificates"]["pg3-patroni"]
    assert tls.inspect(renewed).days_left(tls.utcnow()) > 364
    assert set(_steps(cli).values()) == {"same"}
    cli.run("destroy", "--yes")


def test_tls_off_creates_no_key_material(project: tuple[PulumiCli, Path]) -> None:
    cli, work = project
    raw = _raw()
    raw["tls"] = {"enabled": False}
    _write_config(work, raw)
    steps = _steps(cli)
    assert set(steps) == {"pgha-engine-tls-test", "pgha-lab-tls"}, steps  # the stack and an empty component


def test_turning_tls_off_says_so(project: tuple[PulumiCli, Path]) -> None:
    cli, work = project
    cli.run("up", "--yes")
    raw = _raw()
    raw["tls"] = {"enabled": False}
    _write_config(work, raw)
    # The fixture has nothing but key material, so its preview alone reads as a destroy: add its
    # steps to a real cluster's no-change preview (tests/fixtures/previews), as a stack would show.
    tls_off = json.loads(cli.run("preview", "--json").stdout)
    cluster = json.loads((ROOT / "tests" / "fixtures" / "previews" / "no-change.json").read_text())
    cluster["steps"] += [s for s in tls_off["steps"] if s["op"] == "delete"]
    plan = build_plan(parse_preview(json.dumps(cluster)))
    assert [c.text for c in plan.concerns if c.topic == "TLS off"] == [
        "the cluster CA and every certificate are deleted: traffic between the hosts goes back to plaintext."]
    assert any(line.startswith("TLS: certificate(s) no longer needed: pg1-etcd") for line in plan.lines)


def test_bad_tls_config_fails_the_preview_naming_the_key(project: tuple[PulumiCli, Path]) -> None:
    cli, work = project
    raw = _raw()
    raw["tls"] = {"source": "ca"}
    _write_config(work, raw)
    result = cli.run("preview", check=False)
    assert result.returncode != 0
    assert "pgha:tls.caCertFile: is required with source ca" in result.stdout + result.stderr


def test_users_ca_signs_and_its_key_stays_encrypted(project: tuple[PulumiCli, Path], tmp_path: Path) -> None:
    cli, work = project
    users = tls.create_ca("ACME internal CA", 3650)
    ca_file = tmp_path / "acme-ca.crt"
    ca_file.write_text(users.cert_pem)
    raw = _raw()
    raw["tls"] = {"source": "ca", "caCertFile": str(ca_file), "validityDays": 90}
    _write_config(work, raw)
    # A key that is not the CA's: the preview fails naming the secret, and never shows the key.
    wrong = tls.create_ca("ACME internal CA", 3650).key_pem
    cli.run("config", "set", "--secret", "pgha:tlsCaKey", input=wrong)
    failed = cli.run("preview", check=False)
    assert failed.returncode != 0
    assert "pgha:tlsCaKey: the CA key is not the key of CN=ACME internal CA" in failed.stdout + failed.stderr
    assert "PRIVATE KEY" not in failed.stdout + failed.stderr

    cli.run("config", "set", "--secret", "pgha:tlsCaKey", input=users.key_pem)
    cli.run("up", "--yes")
    outputs = json.loads(cli.run("stack", "output", "--json").stdout)
    assert outputs["trust"] == users.cert_pem
    assert "ca" not in outputs["expiry"], "no CA of the stack's own"
    for pem in outputs["certificates"].values():
        tls.verify(pem, users.cert_pem, tls.utcnow(), client=True)
        assert 89 <= tls.inspect(pem).days_left(tls.utcnow()) <= 90
    exported = cli.run("stack", "export").stdout
    assert "PRIVATE KEY" not in exported
    assert users.key_pem.splitlines()[1] not in exported
    assert users.key_pem.splitlines()[1] not in (work / "Pulumi.test.yaml").read_text()
    # A pull request's CI job has the state and the passphrase but not the CA file: its preview
    # shows the certificates unchanged; an `up` there refuses, naming the key.
    ca_file.unlink()
    assert set(_steps(cli).values()) == {"same"}
    refused = cli.run("up", "--yes", check=False)
    assert refused.returncode != 0
    assert f"pgha:tls.caCertFile: cannot read {ca_file}" in refused.stdout + refused.stderr
    ca_file.write_text(users.cert_pem)
    cli.run("destroy", "--yes")


def test_ready_made_certificates_are_checked_not_issued(project: tuple[PulumiCli, Path],
                                                       tmp_path: Path) -> None:
    cli, work = project
    ca = tls.create_ca("ACME internal CA", 3650)
    files: dict[str, dict[str, str]] = {}
    for i, address in ((1, "10.77.0.11"), (2, "10.77.0.12"), (3, "10.77.0.13")):
        # pg3's certificate names another address: the preview must refuse it.
        names = (f"pg{i}",), ("10.77.0.99" if i == 3 else address,)
        issued = tls.issue(ca, tls.CertificateRequest(f"pg{i}", *names, server=True, client=True))
        (tmp_path / f"pg{i}.crt").write_text(issued.cert_pem)
        (tmp_path / f"pg{i}.key").write_text(issued.key_pem)
        files[f"pg{i}"] = {"certFile": str(tmp_path / f"pg{i}.crt"), "keyFile": str(tmp_path / f"pg{i}.key")}
    (tmp_path / "ca.crt").write_text(ca.cert_pem)
    client = tls.issue(ca, tls.CertificateRequest("pgha", ("pgha-client",), client=True))
    (tmp_path / "pgha.crt").write_text(client.cert_pem)
    (tmp_path / "pgha.key").write_text(client.key_pem)
    raw = _raw()
    raw["tls"] = {"source": "certificates", "caCertFile": str(tmp_path / "ca.crt"), "certificates": files,
                  "clientCertificate": {"certFile": str(tmp_path / "pgha.crt"),
                                        "keyFile": str(tmp_path / "pgha.key")}}
    _write_config(work, raw)
    failed = cli.run("preview", check=False)
    assert failed.returncode != 0
    assert (f"pgha:tls.certificates.pg3.certFile: {tmp_path}/pg3.crt does not name 10.77.0.13 in its "
            "subjectAltName") in failed.stdout + failed.stderr

    fixed = tls.issue(ca, tls.CertificateRequest("pg3", ("pg3",), ("10.77.0.13",), server=True, client=True))
    (tmp_path / "pg3.crt").write_text(fixed.cert_pem)
    (tmp_path / "pg3.key").write_text(fixed.key_pem)
    steps = _steps(cli)
    assert set(steps) == {"pgha-engine-tls-test", "pgha-lab-tls"}, steps  # nothing issued
    cli.run("up", "--yes")
    outputs = json.loads(cli.run("stack", "output", "--json").stdout)
    assert sorted(outputs["certificates"]) == ["pg1", "pg2", "pg3", "pgha-client"]
    assert outputs["certificates"]["pg3"] == fixed.cert_pem


def test_an_expiring_ca_rotates_with_both_cas_trusted(project: tuple[PulumiCli, Path]) -> None:
    """A CA that can no longer sign a full-term certificate is rotated in place: a new CA, the
    old one kept in the trust bundle until it expires, every certificate issued again."""
    cli, _ = project
    cli.run("up", "--yes")
    # Put a CA with 100 days left in the state (host certificates last 365): rotation is due.
    aging = tls.create_ca("pgha pgha-lab cluster CA", 100)
    state = json.loads(cli.run("stack", "export").stdout)
    for res in state["deployment"]["resources"]:
        if res["type"] == CA_TYPE:
            res["outputs"]["cert_pem"] = aging.cert_pem
    cli.run("stack", "import", input=json.dumps(state))

    steps = _steps(cli)
    assert steps["pgha-lab-ca"] == "update", steps
    plan = build_plan(parse_preview(cli.run("preview", "--json").stdout))
    assert any(line.startswith("TLS: the cluster CA rotates") for line in plan.lines), plan.lines
    assert "TLS: certificate pg1-etcd issued again: the CA changed" in plan.lines
    assert any(c.topic == "CA rotation" for c in plan.concerns)
    # The preview does not know the new CA yet, and says every certificate will be issued again.
    assert sorted(n for n, op in steps.items() if op == "replace") == [f"pgha-lab-tls-{c}" for c in CERTS]
    cli.run("up", "--yes")
    outputs = json.loads(cli.run("stack", "output", "--json").stdout)
    trust = outputs["trust"]
    assert trust.count("BEGIN CERTIFICATE") == 2 and aging.cert_pem in trust
    new_ca = trust.replace(aging.cert_pem, "")
    assert tls.inspect(new_ca).days_left(tls.utcnow()) > 3600
    for name, pem in outputs["certificates"].items():
        assert tls.issued_by(pem, new_ca), f"{name} was not issued again by the new CA"
        tls.verify(pem, trust, tls.utcnow(), client=True)
    ca = next(r for r in _resources(cli) if r["type"] == CA_TYPE)
    assert "before a host certificate issued now (365 days) would" in ca["outputs"]["rotated"]
    assert set(_steps(cli).values()) == {"same"}, "settled after one up"
