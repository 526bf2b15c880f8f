"""pgha's own https calls (transport/rest.py) with the client identity of pgha:tls, against a real
TLS server on the loopback that requires a client certificate of the cluster CA (as etcd with
--client-cert-auth and Patroni with verify_client do)."""

from __future__ import annotations

import json
import os
import ssl
import stat
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from components import tls
from components.providers.base import HostProvider
from components.transport import tls_client
from components.transport.rest import EtcdGateway, PatroniApi, RestError

SERVER = tls.CertificateRequest("pg1", ("pg1", "localhost"), ("127.0.0.1",), server=True, client=True)


class _Handler(BaseHTTPRequestHandler):
    seen: ClassVar[list[dict[str, Any]]] = []

    def _answer(self) -> None:
        peer = self.connection.getpeercert()  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        self.seen.append({"path": self.path, "method": self.command, "peer": peer,
                          "body": self.rfile.read(length).decode() if length else ""})
        body = json.dumps({"leader": "42", "header": {}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PATCH = _answer

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture(scope="module")
def pki() -> dict[str, tls.KeyAndCertificate]:
    ca = tls.create_ca("pgha transport CA", 30)
    return {"ca": ca, "server": tls.issue(ca, SERVER),
            "client": tls.issue(ca, tls.CertificateRequest("pgha lab", ("pgha-client",), client=True))}


@pytest.fixture()
def server(pki: dict[str, tls.KeyAndCertificate], tmp_path: Path) -> Iterator[str]:
    for name, text in (("ca.crt", pki["ca"].cert_pem), ("srv.crt", pki["server"].cert_pem),
                       ("srv.key", pki["server"].key_pem)):
        (tmp_path / name).write_text(text)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tmp_path / "ca.crt"))
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(str(tmp_path / "srv.crt"), str(tmp_path / "srv.key"))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Handler.seen.clear()
    try:
        yield f"https://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _material(pki: dict[str, tls.KeyAndCertificate]) -> dict[str, str]:
    return {"ca_pem": pki["ca"].cert_pem, "cert_pem": pki["client"].cert_pem,
            "key_pem": pki["client"].key_pem}


def test_etcd_and_patroni_calls_verify_the_server_and_show_the_client_certificate(
        server: str, pki: dict[str, tls.KeyAndCertificate]) -> None:
    with tls_client.client_tls(_material(pki)) as files:
        assert files is not None
        directory = Path(files.key_file).parent
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        for path in (files.ca_file, files.cert_file, files.key_file):
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert EtcdGateway(server).status()["leader"] == "42"
        assert EtcdGateway(server).has_leader()
        assert PatroniApi(server, auth=("patroni", "pw")).patch_config({"ttl": 30}).status_code == 200
    assert not directory.exists(), "the key file is removed when the call returns"
    assert [s["path"] for s in _Handler.seen] == ["/v3/maintenance/status", "/v3/maintenance/status",
                                                  "/config"]
    for request in _Handler.seen:
        assert request["peer"]["subject"] == ((("commonName", "pgha lab"),),)


def test_without_the_identity_the_server_is_not_trusted(server: str) -> None:
    with pytest.raises(RestError, match="CERTIFICATE_VERIFY_FAILED"):
        EtcdGateway(server).status()
    assert not EtcdGateway(server).has_leader()


def test_another_ca_is_refused(server: str, pki: dict[str, tls.KeyAndCertificate]) -> None:
    stranger = tls.create_ca("pgha transport CA", 30)
    with tls_client.client_tls({**_material(pki), "ca_pem": stranger.cert_pem}), \
            pytest.raises(RestError, match="CERTIFICATE_VERIFY_FAILED"):
        EtcdGateway(server).status()


class _Probe(HostProvider):
    def read(self, id_: str, props: dict[str, Any]) -> Any:
        return EtcdGateway(props["endpoint"]).status()


def test_a_provider_call_uses_its_resources_tls_client(server: str,
                                                       pki: dict[str, tls.KeyAndCertificate]) -> None:
    """The base provider wraps every call: a resource whose inputs carry `tls_client` talks
    https with it, and nothing is left behind."""
    assert _Probe().read("id", {"endpoint": server, "tls_client": _material(pki)})["leader"] == "42"
    assert tls_client.current() is None
    with pytest.raises(RestError):
        _Probe().read("id", {"endpoint": server})


def test_files_written_once_are_presented_for_a_block(server: str, pki: dict[str, tls.KeyAndCertificate],
                                                      tmp_path: Path) -> None:
    """write_files + presenting: the identity kept in files of the caller's own directory (the
    bench keeps one for a deployment's lifetime), used only inside the block."""
    directory = tmp_path / "identity"
    directory.mkdir(mode=0o700)
    files = tls_client.write_files(str(directory), _material(pki))
    for path in (files.ca_file, files.cert_file, files.key_file):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with tls_client.presenting(files):
        assert PatroniApi(server).cluster()["leader"] == "42"
    assert tls_client.current() is None
    with pytest.raises(RestError, match="CERTIFICATE_VERIFY_FAILED"):
        PatroniApi(server).cluster()
    assert (directory / "client.key").exists(), "the caller's files stay"


def test_the_bench_api_presents_its_identity_from_any_thread(server: str,
                                                             pki: dict[str, tls.KeyAndCertificate],
                                                             tmp_path: Path) -> None:
    """bench's TlsPatroniApi carries its identity into each call: a call from another thread
    (the bench's watchers) shows the client certificate, where the context of the thread that
    made the API does not follow."""
    from bench.deploy import TlsPatroniApi

    (tmp_path / "identity").mkdir(mode=0o700)
    files = tls_client.write_files(str(tmp_path / "identity"), _material(pki))
    outcome: dict[str, Any] = {}

    def call(name: str, api: PatroniApi) -> None:
        try:
            outcome[name] = api.switchover("pg1", "pg2").status_code
        except RestError as err:
            outcome[name] = str(err)

    with tls_client.presenting(files):
        for name, api in (("bench", TlsPatroniApi(server, ("patroni", "pw"), (3.0, 10.0), files)),
                          ("plain", PatroniApi(server, auth=("patroni", "pw")))):
            thread = threading.Thread(target=call, args=(name, api))
            thread.start()
            thread.join(timeout=30)
    assert outcome["bench"] == 200, outcome
    assert "CERTIFICATE_VERIFY_FAILED" in outcome["plain"], outcome
    assert [s["path"] for s in _Handler.seen] == ["/switchover"]
    assert _Handler.seen[0]["peer"]["subject"] == ((("commonName", "pgha lab"),),)
