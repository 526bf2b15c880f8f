"""pgBackRest with an S3 repository (pgha:backup.s3), on real lab hosts.

pg1..pg3 run the cluster, pg4 HAProxy, pg5 is the repository host (role `backup`), and pg6 runs
an S3-compatible server: Versity's S3 gateway (`scripts/build-versitygw`, from the Go module
proxy) with its posix backend, on HTTPS with a certificate from a CA made for the test. pgBackRest
2.45 matches certificates by DNS name only, so pg5 reaches it as `s3.pgha.lab`. One `up`
archives into the bucket from the first WAL segment; a full backup and `pgbackrest verify`
pass; the S3 secret key is only in the repository host's 0600 file; destroy keeps the bucket.
"""

from __future__ import annotations

import copy
import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lab import Lab
from scripts.lab_stack import link_wheelhouse
from tests.cluster.conftest import ProjectCopy, host, wait_until
from tests.conftest import ROOT

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1800)]

REPO, S3_HOST = "pg5", "pg6"
S3_NAME, S3_PORT, BUCKET = "s3.pgha.lab", 7070, "pgbackrest"
STANZA = "pgha-lab"
KEY_ID = "pgha-lab-backup"


@dataclass
class S3Lab:
    lab: Lab
    project: ProjectCopy
    secret_key: str

    def repo(self, command: str, timeout: float = 600) -> str:
        out = self.lab.ssh(REPO, f"cd / && sudo -u pgbackrest {command}", check=False, timeout=timeout)
        assert out.returncode == 0, f"{command}: {out.returncode}\n{out.stdout}\n{out.stderr}"
        return out.stdout


def _tls(directory: Path) -> None:
    """A CA and a server certificate for S3_NAME (openssl, for the test only)."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=pgha lab test CA")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "server.key", "-out", "server.csr", "-subj", f"/CN={S3_NAME}")
    (directory / "san.ext").write_text(f"subjectAltName=DNS:{S3_NAME}\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.crt", "-days", "2", "-extfile", "san.ext")


def _start_s3(lab: Lab, tls: Path, secret_key: str) -> None:
    binary = subprocess.run([str(ROOT / "scripts" / "build-versitygw")], check=True, capture_output=True,
                            text=True).stdout.strip()
    for src in (binary, tls / "server.crt", tls / "server.key"):
        lab.copy_to(S3_HOST, src, f"/tmp/{Path(src).name}")
    # The keys reach the server from a 0600 environment file (it reads no key file), on stdin here.
    lab.ssh(S3_HOST, "sudo install -d -m 0700 /etc/versitygw /var/lib/versitygw/" + BUCKET + " && "
                     "sudo install -m 0755 /tmp/versitygw /usr/local/bin/versitygw && "
                     "sudo install -m 0600 /tmp/server.crt /tmp/server.key /etc/versitygw/ && "
                     "sudo sh -c 'umask 077; cat > /etc/versitygw/versitygw.env'",
            input=f"ROOT_ACCESS_KEY_ID={KEY_ID}\nROOT_SECRET_ACCESS_KEY={secret_key}\n")
    unit = (
        "[Unit]\nDescription=S3 gateway for the pgha lab\n[Service]\n"
        "EnvironmentFile=/etc/versitygw/versitygw.env\n"
        f"ExecStart=/usr/local/bin/versitygw --port :{S3_PORT} --cert /etc/versitygw/server.crt "
        "--key /etc/versitygw/server.key --region us-east-1 --keep-alive --quiet --health /health "
        "posix /var/lib/versitygw\n[Install]\nWantedBy=multi-user.target\n")
    lab.ssh(S3_HOST, "sudo sh -c 'cat > /etc/systemd/system/versitygw.service' && "
                     "sudo systemctl daemon-reload && sudo systemctl enable --now versitygw", input=unit)
    address = lab.ssh(S3_HOST, "hostname -I", check=True).stdout.split()[0]
    # What DNS would do: the repository host finds the S3 server by the name in its certificate.
    lab.ssh(REPO, f"echo '{address} {S3_NAME}' | sudo tee -a /etc/hosts >/dev/null")
    wait_until(lambda: lab.ssh(S3_HOST, f"curl -sk https://localhost:{S3_PORT}/health",
                               check=False).stdout.strip() == "OK",
               timeout=30, what="the S3 gateway answering on pg6")


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory, pulumi_bin: Path) -> Iterator[S3Lab]:
    lab = Lab.up(6)
    try:
        link_wheelhouse(lab)
        tls = tmp_path_factory.mktemp("tls")
        _tls(tls)
        # Never a leading "-": `pulumi config set` would read the value as a flag (a CI run hit it).
        secret_key = "k" + secrets.token_urlsafe(30)
        _start_s3(lab, tls, secret_key)
        project = ProjectCopy.with_stack(tmp_path_factory.mktemp("backup-s3"), "s3")
        config: dict[str, Any] = copy.deepcopy(project.base_config)
        config["hosts"].append(host(REPO, ["backup"]))
        config["backup"] = {"s3": {"endpoint": S3_NAME, "port": S3_PORT, "bucket": BUCKET,
                                   "region": "us-east-1", "uriStyle": "path", "keyId": KEY_ID,
                                   "caFile": str(tls / "ca.crt")}}
        project.write_config(config)
        project.run("config", "set", "--secret", "pgha:backupS3KeySecret", secret_key)
        started = time.monotonic()
        project.run("up", "--yes", "--skip-preview")
        print(f"\npulumi up with an S3 repository: {time.monotonic() - started:.1f}s")
        yield S3Lab(lab=lab, project=project, secret_key=secret_key)
        project.run("destroy", "--yes", "--skip-preview", check=False)
    finally:
        Lab.down()


def test_archiving_into_the_bucket_from_the_first_up(s3: S3Lab) -> None:
    s3.repo(f"pgbackrest --stanza={STANZA} check")
    conf = s3.lab.ssh(REPO, f"sudo cat /etc/pgbackrest/conf.d/{STANZA}.conf", check=True).stdout
    assert "repo1-type=s3" in conf and f"repo1-s3-endpoint={S3_NAME}" in conf
    assert s3.secret_key not in conf
    mode = s3.lab.ssh(REPO, f"sudo stat -c '%a %U' /etc/pgbackrest/conf.d/{STANZA}-cipher.conf",
                      check=True).stdout.strip()
    assert mode == "600 pgbackrest"
    # The archive is in the bucket, as objects of the S3 server (its posix backend's files).
    listing = s3.lab.ssh(S3_HOST, f"sudo find /var/lib/versitygw/{BUCKET}/pgbackrest/archive/{STANZA} "
                                  "-type f -name '0000*'", check=True).stdout.split()
    assert listing, "no WAL segment in the bucket"
    status = json.loads(s3.project.run("stack", "output", "backup", "--json").stdout)
    assert status["repository"] == f"s3://{BUCKET}/pgbackrest at {S3_NAME}", status
    assert status["archive"]["healthy"] is True, status
    for name in ("pg1", "pg2", "pg3"):  # the nodes reach the repository host, never S3
        node_conf = s3.lab.ssh(name, "sudo cat /etc/pgbackrest/pgbackrest.conf", check=True).stdout
        assert "s3" not in node_conf and s3.secret_key not in node_conf


def test_full_backup_and_verify(s3: S3Lab) -> None:
    started = time.monotonic()
    out = s3.lab.ssh(REPO, f"sudo systemctl start pgha-backup-{STANZA}-full.service", check=False,
                     timeout=900)
    assert out.returncode == 0, out.stderr + s3.lab.ssh(
        REPO, f"sudo journalctl -u pgha-backup-{STANZA}-full --no-pager -n 40", check=False).stdout
    print(f"\nfull backup into S3: {time.monotonic() - started:.1f}s")
    info = json.loads(s3.repo(f"pgbackrest --stanza={STANZA} --output=json info"))[0]
    assert [b["type"] for b in info["backup"]] == ["full"], info
    assert info["repo"][0]["status"]["code"] == 0, info
    verify = s3.lab.ssh(REPO, f"cd / && sudo -u pgbackrest pgbackrest --stanza={STANZA} "
                              "--log-level-console=info verify", check=False, timeout=600)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    s3.project.run("refresh", "--run-program", "--yes")
    status = json.loads(s3.project.run("stack", "output", "backup", "--json").stdout)
    assert status["last_full"]["label"].endswith("F") and status["backups"] == 1, status
    s3.project.run("preview", "--expect-no-changes")
