"""pgha's own TLS client identity for its calls to etcd and Patroni (pgha:tls).

requests (OpenSSL) loads a CA bundle, a certificate and a key only from files, so for the length
of one provider call the PEMs from the resource's inputs (`tls_client`: `ca_pem`, `cert_pem`,
`key_pem`, the key a secret) are written to a fresh 0700 directory of the user running pulumi,
each file 0600, and removed when the call returns. `transport/rest.py` then verifies every
https server against the CA and shows the client certificate.
"""

from __future__ import annotations

import contextvars
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TlsClientFiles:
    ca_file: str
    cert_file: str
    key_file: str


_CURRENT: contextvars.ContextVar[TlsClientFiles | None] = contextvars.ContextVar("pgha_tls_client",
                                                                                   default=None)


def current() -> TlsClientFiles | None:
    """The TLS client identity of the call in progress, if its resource has one."""
    return _CURRENT.get()


def _write(directory: str, name: str, text: str) -> str:
    path = os.path.join(directory, name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    return path


def write_files(directory: str, material: Mapping[str, Any]) -> TlsClientFiles:
    """Write `material`'s PEMs ({ca_pem, cert_pem, key_pem}) into `directory` (the caller's,
    0700), each file new and 0600."""
    return TlsClientFiles(
        ca_file=_write(directory, "ca.crt", str(material["ca_pem"])),
        cert_file=_write(directory, "client.crt", str(material["cert_pem"])),
        key_file=_write(directory, "client.key", str(material["key_pem"])),
    )


@contextmanager
def presenting(files: TlsClientFiles) -> Iterator[TlsClientFiles]:
    """Use files already written (write_files) for the https calls made inside the block."""
    token = _CURRENT.set(files)
    try:
        yield files
    finally:
        _CURRENT.reset(token)


@contextmanager
def client_tls(material: Mapping[str, Any] | None) -> Iterator[TlsClientFiles | None]:
    """Use `material` ({ca_pem, cert_pem, key_pem}) for the https calls made inside the block;
    None (TLS off, or a resource of an older pgha) changes nothing."""
    if not material:
        yield None
        return
    directory = tempfile.mkdtemp(prefix="pgha-tls-")  # 0700, this user's
    try:
        with presenting(write_files(directory, material)) as files:
            yield files
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def served_certificate(address: str, port: int, timeout: float = 5.0) -> str | None:
    """The certificate (PEM) a TLS server serves now, unverified (what is served, not whether to
    trust it); None when nothing answers with TLS. No client certificate is shown: TLS 1.3
    completes the handshake before a server asks for one."""
    import socket
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock, \
                ctx.wrap_socket(sock, server_hostname=address) as tls:
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return None
    return ssl.DER_cert_to_PEM_cert(der) if der else None
