"""The certificate providers' create/diff/update without the engine, on a clock the test moves:
what is replaced, what is only stored, and how a CA rotation keeps the old CA trusted."""

from __future__ import annotations

import datetime as dt
from typing import Any

from components import tls
from components.providers.tls_certificates import (
    UNKNOWN,
    CertificateAuthorityProvider,
    CertificateProvider,
)

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)


def _at(provider: Any, when: dt.datetime) -> Any:
    provider.clock = lambda: when
    return provider


def _ca(when: dt.datetime = NOW, **props: Any) -> dict[str, Any]:
    inputs = {"common_name": "pgha lab CA", "validity_days": 3650, "host_validity_days": 365, **props}
    return _at(CertificateAuthorityProvider(), when).create(inputs).outs


def _cert_inputs(ca: dict[str, Any], **props: Any) -> dict[str, Any]:
    return {"name": "pg1-patroni", "common_name": "pg1", "dns_names": ["pg1", "localhost"],
            "ip_addresses": ["10.77.0.11", "127.0.0.1"], "server": True, "client": True,
            "validity_days": 365.0, "renew_before_days": 30.0, "ca_cert_pem": ca["cert_pem"],
            "ca_key_pem": ca["key_pem"], **props}


def test_create_issues_a_certificate_of_the_ca() -> None:
    ca = _ca()
    outs = _at(CertificateProvider(), NOW).create(_cert_inputs(ca)).outs
    tls.verify(outs["cert_pem"], ca["trust_pem"], NOW, server_name="10.77.0.11", client=True)
    assert tls.key_matches(outs["cert_pem"], outs["key_pem"])
    assert outs["validity_days"] == 365 and isinstance(outs["validity_days"], int)
    assert outs["not_after"] == "2027-11-27T12:00:00+00:00"


def test_diff_replaces_only_for_a_reason() -> None:
    ca = _ca()
    provider = _at(CertificateProvider(), NOW)
    olds = provider.create(_cert_inputs(ca)).outs
    same = provider.diff("id", olds, _cert_inputs(ca))
    assert (same.changes, same.replaces) == (False, [])
    # A shorter lifetime or another window applies at the next renewal: stored, not re-issued.
    soft = provider.diff("id", olds, _cert_inputs(ca, validity_days=90, renew_before_days=20))
    assert (soft.changes, soft.replaces) == (True, [])
    updated = provider.update("id", olds, _cert_inputs(ca, validity_days=90)).outs
    assert updated["cert_pem"] == olds["cert_pem"] and updated["validity_days"] == 90
    moved = provider.diff("id", olds, _cert_inputs(ca, ip_addresses=["10.77.0.21", "127.0.0.1"]))
    assert (moved.changes, moved.replaces) == (True, ["ip_addresses"])
    due = _at(CertificateProvider(), NOW + dt.timedelta(days=340)).diff("id", olds, _cert_inputs(ca))
    assert (due.changes, due.replaces) == (True, ["not_after"])
    rotating = provider.diff("id", olds, _cert_inputs(ca, ca_cert_pem=UNKNOWN, ca_key_pem=UNKNOWN))
    assert rotating.replaces == ["ca_cert_pem"]
    # What a preview hands the diff while the CA is updated (rotated): the SDK's Unknown.
    from pulumi.output import Unknown

    unknown = provider.diff("id", olds, _cert_inputs(ca, ca_cert_pem=Unknown(), ca_key_pem=Unknown()))
    assert unknown.replaces == ["ca_cert_pem"]
    other = _ca()
    assert provider.diff("id", olds, _cert_inputs(other)).replaces == ["ca_cert_pem"]


def test_ca_rotation_keeps_the_old_ca_trusted_until_it_expires() -> None:
    first = _ca(validity_days=800)
    late = NOW + dt.timedelta(days=500)  # 300 days left: less than a host certificate's 365
    provider = _at(CertificateAuthorityProvider(), late)
    inputs = {"common_name": "pgha lab CA", "validity_days": 800, "host_validity_days": 365}
    assert provider.diff("id", first, inputs).changes is True
    assert provider.diff("id", first, inputs).replaces == [], "a rotation is an update, not a replace"
    rotated = provider.update("id", first, inputs).outs
    assert rotated["cert_pem"] != first["cert_pem"]
    assert rotated["previous_cert_pem"] == first["cert_pem"]
    assert "before a host certificate issued now (365 days) would" in rotated["rotated"]
    # Both CAs are trusted: certificates of the old and of the new CA verify with trust_pem.
    old_leaf = _at(CertificateProvider(), NOW + dt.timedelta(days=400)).create(_cert_inputs(first)).outs
    new_leaf = _at(CertificateProvider(), late).create(_cert_inputs(rotated)).outs
    for leaf in (old_leaf, new_leaf):
        tls.verify(leaf["cert_pem"], rotated["trust_pem"], late, server_name="pg1")
    # A second rotation (pgha:tls.caGeneration) while the first CA is still valid keeps it too:
    # the trusted CAs never lose one that may have signed a certificate in use.
    again = provider.update("id", rotated, {**inputs, "common_name": "pgha lab CA 2"}).outs
    assert again["trust_pem"].count("BEGIN CERTIFICATE") == 3
    assert tls.bundle(first["cert_pem"]) in again["trust_pem"] and rotated["cert_pem"] in again["trust_pem"]
    # Once the old CA has expired the next diff drops it from the bundle, and keeps the new CA.
    after = _at(CertificateAuthorityProvider(), NOW + dt.timedelta(days=801))
    assert after.diff("id", rotated, inputs).changes is True
    dropped = after.update("id", rotated, inputs).outs
    assert dropped["cert_pem"] == rotated["cert_pem"] and dropped["previous_cert_pem"] is None
    assert dropped["trust_pem"].count("BEGIN CERTIFICATE") == 1


def test_ca_settings_that_need_no_new_ca() -> None:
    ca = _ca()
    provider = _at(CertificateAuthorityProvider(), NOW)
    inputs = {"common_name": "pgha lab CA", "validity_days": 7300, "host_validity_days": 90}
    diff = provider.diff("id", ca, inputs)
    assert (diff.changes, diff.replaces) == (True, [])
    outs = provider.update("id", ca, inputs).outs
    assert outs["cert_pem"] == ca["cert_pem"] and outs["validity_days"] == 7300
    renamed = provider.update("id", ca, {**inputs, "common_name": "pgha prod CA"}).outs
    assert tls.inspect(renamed["cert_pem"]).common_name == "pgha prod CA"
    assert renamed["trust_pem"].count("BEGIN CERTIFICATE") == 2


def test_refresh_reads_the_stored_certificate() -> None:
    ca = _ca()
    outs = _at(CertificateProvider(), NOW).create(_cert_inputs(ca)).outs
    read = CertificateProvider().read("id", {**outs, "not_after": "stale"})
    assert read.outs["not_after"] == outs["not_after"]
