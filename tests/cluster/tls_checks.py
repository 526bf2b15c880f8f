"""What the TLS lab tests (test_tls.py, test_tls_move.py) check on a cluster running with pgha:tls."""

from __future__ import annotations

from pathlib import Path

import requests

from lab import Lab


def plaintext_refused(url: str) -> str:
    """How a plaintext request to a TLS port fails: an error, or Go's 400 for etcd."""
    try:
        resp = requests.get(url, timeout=5)
    except requests.RequestException as err:
        return type(err).__name__
    assert resp.status_code == 400 and "HTTPS" in resp.text, (url, resp.status_code, resp.text[:200])
    return f"HTTP {resp.status_code}"


def node_client_certificate(lab: Lab, into: Path) -> tuple[str, str]:
    """pg1's Patroni certificate and key, copied into `into` (the key 0600): a client
    certificate of the cluster CA, for etcd's client auth."""
    cert, key = into / "node.crt", into / "node.key"
    cert.write_text(lab.ssh("pg1", "sudo cat /etc/patroni/tls/node.crt").stdout)
    key.write_text(lab.ssh("pg1", "sudo cat /etc/patroni/tls/node.key").stdout)
    key.chmod(0o600)
    return str(cert), str(key)
