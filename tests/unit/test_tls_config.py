"""pgha:tls and pgha:tlsCaKey: defaults, the three certificate sources, and bad configs naming
their key (each case one mutation of the production-valid base)."""

from __future__ import annotations

from typing import Any

import pytest

from components.config import load_cluster_config
from components.tls_config import HostCertificateFiles, TlsSettings
from components.validation import ConfigError
from tests.unit.configs import base_raw, base_secret_keys, lab_raw, set_path

CA_KEY = "-----BEGIN PRIVATE KEY-----\nnot-a-real-key\n-----END PRIVATE KEY-----\n"


def tls_raw(**tls: Any) -> dict[str, Any]:
    raw = base_raw()
    raw["production"] = True
    if tls:
        raw["tls"] = tls
    return raw


def problems_of(raw: dict[str, Any], secrets: set[str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_cluster_config(raw, base_secret_keys() | {"tlsCaKey"} if secrets is None else secrets)
    return err.value.problems


def test_on_by_default_with_a_generated_ca() -> None:
    tls = load_cluster_config(tls_raw(), base_secret_keys()).tls
    assert tls == TlsSettings()
    assert (tls.enabled, tls.explicit, tls.source, tls.ca_cert_file) == (True, False, "generated", None)
    assert (tls.validity_days, tls.renew_before_days, tls.ca_validity_days) == (365, 30, 3650)
    assert (tls.restapi_verify_client, tls.replication_sslmode) == ("optional", "verify-full")
    assert tls.issues_certificates


def test_the_lab_stack_turns_tls_off_explicitly() -> None:
    """Until every lab test runs with TLS, the lab stack says so (tests/cluster/test_tls.py turns it on)."""
    tls = load_cluster_config(lab_raw(), set()).tls
    assert (tls.enabled, tls.explicit) == (False, True)


def test_explicitly_off() -> None:
    tls = load_cluster_config(tls_raw(enabled=False), base_secret_keys()).tls
    assert (tls.enabled, tls.explicit, tls.issues_certificates) == (False, True, False)
    # An explicit true is recorded as explicit too: the preview then need not explain a default.
    assert load_cluster_config(tls_raw(enabled=True), base_secret_keys()).tls.explicit


def test_users_ca() -> None:
    raw = tls_raw(source="ca", caCertFile="/etc/pgha/ca.crt", validityDays=90, renewBeforeDays=20)
    raw["tlsCaKey"] = CA_KEY
    tls = load_cluster_config(raw, base_secret_keys() | {"tlsCaKey"}).tls
    assert (tls.source, tls.ca_cert_file, tls.validity_days, tls.renew_before_days) == (
        "ca", "/etc/pgha/ca.crt", 90, 20)
    assert tls.issues_certificates


def test_ready_made_certificates() -> None:
    files = {f"pg{i}": {"certFile": f"/etc/pgha/pg{i}.crt", "keyFile": f"/etc/pgha/pg{i}.key"}
             for i in (1, 2, 3)}
    client = {"certFile": "/etc/pgha/pgha.crt", "keyFile": "/etc/pgha/pgha.key"}
    tls = load_cluster_config(tls_raw(source="certificates", caCertFile="/etc/pgha/ca.crt",
                                      certificates=files, clientCertificate=client), base_secret_keys()).tls
    assert tls.certificates["pg2"] == HostCertificateFiles("/etc/pgha/pg2.crt", "/etc/pgha/pg2.key")
    assert tls.client_certificate == HostCertificateFiles("/etc/pgha/pgha.crt", "/etc/pgha/pgha.key")
    assert not tls.issues_certificates


def test_short_validity_gets_a_proportionate_renewal_window() -> None:
    assert load_cluster_config(tls_raw(validityDays=30), base_secret_keys()).tls.renew_before_days == 10


BAD = [
    ({"tls": True}, "tls", "must be an object: write `pgha:tls: {enabled: true}`"),
    ({"tls.enable": False}, "tls.enable", "unknown key (did you mean 'enabled'?)"),
    ({"tls.enabled": "yes"}, "tls.enabled", "must be true or false"),
    ({"tls.source": "vault"}, "tls.source", "'vault' is not one of generated, ca, certificates"),
    ({"tls.source": "ca"}, "tls.caCertFile", "is required with source ca"),
    ({"tls.source": "ca", "tls.caCertFile": "/etc/pgha/ca.crt"}, "tlsCaKey", "missing secret"),
    ({"tls.caCertFile": "/etc/pgha/ca.crt"}, "tls.caCertFile", "only for source ca or certificates"),
    ({"tls.source": "ca", "tls.caCertFile": "ca.crt", "tlsCaKey": CA_KEY}, "tls.caCertFile",
     "'ca.crt' is not a valid absolute path"),
    ({"tlsCaKey": CA_KEY}, "tlsCaKey", "is set but pgha:tls.source is generated, not ca"),
    ({"tls.validityDays": 0}, "tls.validityDays", "must be at least 2"),
    ({"tls.validityDays": 90, "tls.renewBeforeDays": 90}, "tls.renewBeforeDays",
     "must be less than tls.validityDays (90)"),
    ({"tls.validityDays": 365, "tls.caValidityDays": 500}, "tls.caValidityDays",
     "must be at least twice tls.validityDays (730)"),
    ({"tls.source": "certificates", "tls.caCertFile": "/c.crt", "tls.validityDays": 90},
     "tls.validityDays", "no meaning with source certificates"),
    ({"tls.source": "certificates", "tls.caCertFile": "/c.crt"}, "tls.certificates",
     "no certificate for pg1, pg2, pg3"),
    ({"tls.source": "certificates", "tls.caCertFile": "/c.crt", "tls.restApiVerifyClient": "required"},
     "tls.certificates", "no certificate for pg1, pg2, pg3, pg4"),
    ({"tls.certificates.pg1": {"certFile": "/a", "keyFile": "/b"}}, "tls.certificates",
     "only for source certificates (source is generated)"),
    ({"tls.source": "certificates", "tls.caCertFile": "/c.crt",
      "tls.certificates.pg9": {"certFile": "/a", "keyFile": "/b"}}, "tls.certificates.pg9",
     "'pg9' is not a host in pgha:hosts"),
    ({"tls.source": "certificates", "tls.caCertFile": "/c.crt",
      "tls.certificates.pg1": {"certFile": "/a", "key": "/b"}}, "tls.certificates.pg1.key",
     "unknown key (did you mean 'keyFile'?)"),
    ({"tls.source": "ca", "tls.caCertFile": "/c.crt", "tlsCaKey": CA_KEY, "tls.caValidityDays": 9000},
     "tls.caValidityDays", "only for source generated"),
    ({"tls.source": "ca", "tls.caCertFile": "/c.crt", "tlsCaKey": CA_KEY, "tls.caGeneration": 2},
     "tls.caGeneration", "is only for source generated"),
    ({"tls.caGeneration": 0}, "tls.caGeneration", ""),
    ({"tls.source": "certificates", "tls.caCertFile": "/c.crt"}, "tls.clientCertificate",
     "is required with source certificates"),
    ({"tls.clientCertificate": {"certFile": "/a", "keyFile": "/b"}}, "tls.clientCertificate",
     "is only for source certificates (source is generated)"),
    ({"tls.source": "certificates", "tls.caCertFile": "/c.crt",
      "tls.clientCertificate": {"certFile": "a.crt", "keyFile": "/b"}}, "tls.clientCertificate.certFile",
     "'a.crt' is not a valid absolute path"),
    ({"tls.serverNames": ["db_primary"]}, "tls.serverNames[0]",
     "'db_primary' is neither a DNS name nor an IP address"),
    ({"tls.serverNames": "db.example"}, "tls.serverNames", "must be a list"),
    ({"tls.restApiVerifyClient": "none"}, "tls.restApiVerifyClient",
     "'none' is not one of optional, required"),
    ({"tls.replicationSslMode": "require"}, "tls.replicationSslMode", "'require' is not one of verify-full"),
    ({"postgresql.parameters.ssl": "on"}, "postgresql.parameters.ssl", "is set by pgha:tls"),
    ({"postgresql.parameters.ssl_cert_file": "/x"}, "postgresql.parameters.ssl_cert_file",
     "is set by pgha:tls"),
]


@pytest.mark.parametrize(("mutation", "key", "fragment"), BAD,
                         ids=[f"{case[1]}:{case[2][:30]}" for case in BAD])
def test_bad_tls_config_names_its_key(mutation: dict[str, Any], key: str, fragment: str) -> None:
    raw = tls_raw()
    for path, value in mutation.items():
        set_path(raw, path, value)
    problems = problems_of(raw)
    assert any(p.startswith(f"pgha:{key}: ") and fragment in p for p in problems), problems


def test_ca_key_must_be_a_secret() -> None:
    raw = tls_raw(source="ca", caCertFile="/etc/pgha/ca.crt")
    raw["tlsCaKey"] = CA_KEY
    problems = problems_of(raw, base_secret_keys())
    assert any(p.startswith("pgha:tlsCaKey: must be a secret") for p in problems), problems
    assert not any(CA_KEY.strip() in p for p in problems), "the key itself must never be in an error"


def test_ssl_parameters_are_allowed_with_tls_off() -> None:
    raw = tls_raw(enabled=False)
    set_path(raw, "postgresql.parameters.ssl", "on")
    assert load_cluster_config(raw, base_secret_keys()).tls.enabled is False
