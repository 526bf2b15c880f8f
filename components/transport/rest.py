"""REST clients: etcd's v3 JSON gateway and Patroni's REST API (requests).

requests is imported on the first call, not with this module: a preview
imports every provider but calls no API (see transport/ssh.py).
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

from components.transport import tls_client

if TYPE_CHECKING:
    import requests

TIMEOUT = (3.0, 10.0)
# Roles under which Patroni reports the member holding the leader key.
LEADER_ROLES = ("leader", "primary", "master", "standby_leader")


class RestError(RuntimeError):
    pass


def _request(method: str, url: str, what: str, **kwargs: Any) -> requests.Response:
    import requests

    identity = tls_client.current()
    if identity is not None and url.startswith("https://"):
        # pgha:tls: verify the server against the cluster CA, show pgha's client certificate.
        kwargs.setdefault("verify", identity.ca_file)
        kwargs.setdefault("cert", (identity.cert_file, identity.key_file))
    try:
        return requests.request(method, url, **kwargs)
    except requests.RequestException as err:
        raise RestError(f"{what}: {err}") from err


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _prefix_end(prefix: str) -> str:
    """etcd's range_end for 'every key with this prefix'."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return base64.b64encode(bytes(raw)).decode()


class EtcdGateway:
    """One etcd member's v3 JSON gateway (http://host:2379)."""

    def __init__(self, endpoint: str, timeout: tuple[float, float] = TIMEOUT) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.timeout = timeout

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        resp = _request("POST", f"{self.endpoint}{path}", f"etcd {self.endpoint}{path}", json=body,
                        timeout=self.timeout)
        if resp.status_code != 200:
            raise RestError(f"etcd {self.endpoint}{path}: HTTP {resp.status_code}: {resp.text[:300]}")
        return resp.json()

    def has_leader(self) -> bool:
        """Whether this member knows a raft leader. Status is answered locally, so unlike
        /health (which waits up to its timeout for a quorum read) it never blocks."""
        try:
            resp = _request("POST", f"{self.endpoint}/v3/maintenance/status", f"etcd {self.endpoint}",
                            json={}, timeout=(self.timeout[0], 3.0))
            return resp.status_code == 200 and str(resp.json().get("leader", "0")) not in ("", "0")
        except (RestError, ValueError):
            return False

    def healthy(self) -> bool:
        """True when this member answers and the cluster has a leader (quorum)."""
        if not self.has_leader():
            return False  # a founding member still waiting for its peers
        try:
            resp = _request("GET", f"{self.endpoint}/health", f"etcd {self.endpoint}", timeout=self.timeout)
            return resp.status_code == 200 and resp.json().get("health") in ("true", True)
        except (RestError, ValueError):
            return False

    def cluster_version_ready(self) -> bool:
        """A newly formed cluster reports its version as "not_decided", then 3.0, and only
        some seconds later the members' own version. Patroni started before that takes
        it for etcd 3.0, which has no v3 API it can use, and waits 5 s to try again."""
        try:
            resp = _request("GET", f"{self.endpoint}/version", f"etcd {self.endpoint}", timeout=self.timeout)
            version = str(resp.json().get("etcdcluster", ""))
        except (RestError, ValueError):
            return False
        parts = version.split(".")
        return len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit() and (
            int(parts[0]), int(parts[1])) >= (3, 1)

    def members(self) -> list[dict[str, Any]]:
        return self._post("/v3/cluster/member/list", {}).get("members", [])

    def add_member(self, peer_url: str, learner: bool) -> dict[str, Any]:
        return self._post("/v3/cluster/member/add", {"peerURLs": [peer_url], "isLearner": learner})

    def promote_member(self, member_id: str) -> dict[str, Any]:
        return self._post("/v3/cluster/member/promote", {"ID": member_id})

    def remove_member(self, member_id: str) -> dict[str, Any]:
        return self._post("/v3/cluster/member/remove", {"ID": member_id})

    def status(self) -> dict[str, Any]:
        return self._post("/v3/maintenance/status", {})

    def count_prefix(self, prefix: str) -> int:
        body = {"key": _b64(prefix), "range_end": _prefix_end(prefix), "count_only": True}
        return int(self._post("/v3/kv/range", body).get("count", 0))

    def keys_with_prefix(self, prefix: str) -> list[str]:
        body = {"key": _b64(prefix), "range_end": _prefix_end(prefix), "keys_only": True}
        kvs = self._post("/v3/kv/range", body).get("kvs", [])
        return [base64.b64decode(kv["key"]).decode() for kv in kvs]

    def get(self, key: str) -> str | None:
        kvs = self._post("/v3/kv/range", {"key": _b64(key)}).get("kvs", [])
        return base64.b64decode(kvs[0]["value"]).decode() if kvs and "value" in kvs[0] else (
            "" if kvs else None)

    def put(self, key: str, value: str) -> None:
        self._post("/v3/kv/put", {"key": _b64(key), "value": _b64(value)})

    def delete_key(self, key: str) -> int:
        return int(self._post("/v3/kv/deleterange", {"key": _b64(key)}).get("deleted", 0))

    def delete_prefix(self, prefix: str) -> int:
        body = {"key": _b64(prefix), "range_end": _prefix_end(prefix)}
        return int(self._post("/v3/kv/deleterange", body).get("deleted", 0))


def etcd_peer_members(peer_url: str) -> list[dict[str, Any]] | None:
    """The member list an etcd member serves on its peer port, or None if it does not answer.

    The peer port answers at once, even from a founding member that has no quorum yet
    and so serves nothing on its client port (every client request waits for a timeout).
    Such a member lists no clientURLs: members publish them only once a quorum formed.
    """
    try:
        resp = _request("GET", f"{peer_url.rstrip('/')}/members", f"etcd peer {peer_url}", timeout=(1.0, 2.0))
        members = resp.json() if resp.status_code == 200 else None
    except (RestError, ValueError):
        return None
    return members if isinstance(members, list) else None


def first_healthy(endpoints: list[str]) -> EtcdGateway | None:
    for endpoint in endpoints:
        gateway = EtcdGateway(endpoint)
        if gateway.healthy():
            return gateway
    return None


class PatroniApi:
    """One Patroni node's REST API; unsafe calls carry restapi.authentication."""

    def __init__(self, base_url: str, auth: tuple[str, str] | None = None,
                 timeout: tuple[float, float] = TIMEOUT) -> None:
        self.base_url = base_url.rstrip("/")
        self.auth = auth
        self.timeout = timeout

    def _get(self, path: str) -> requests.Response:
        return _request("GET", f"{self.base_url}{path}", f"patroni {self.base_url}{path}",
                        timeout=self.timeout)

    def _json(self, path: str) -> dict[str, Any]:
        resp = self._get(path)
        try:
            return resp.json()
        except ValueError as err:
            raise RestError(f"patroni {self.base_url}{path}: HTTP {resp.status_code}, not JSON") from err

    def patroni(self) -> dict[str, Any]:
        return self._json("/patroni")

    def cluster(self) -> dict[str, Any]:
        return self._json("/cluster")

    def health_status(self, path: str = "/health") -> int:
        return self._get(path).status_code

    def _unsafe(self, method: str, path: str, body: dict[str, Any] | None = None,
                timeout: tuple[float, float] | None = None) -> requests.Response:
        return _request(method, f"{self.base_url}{path}", f"patroni {method} {self.base_url}{path}",
                        json=body, auth=self.auth, timeout=timeout or self.timeout)

    def switchover(self, leader: str, candidate: str) -> requests.Response:
        return self._unsafe("POST", "/switchover", {"leader": leader, "candidate": candidate},
                            timeout=(3.0, 90.0))

    def reload(self) -> requests.Response:
        return self._unsafe("POST", "/reload")

    def restart(self) -> requests.Response:
        return self._unsafe("POST", "/restart", {}, timeout=(3.0, 120.0))

    def config(self) -> dict[str, Any]:
        return self._json("/config")

    def patch_config(self, patch: dict[str, Any]) -> requests.Response:
        return self._unsafe("PATCH", "/config", patch)

    def wake(self) -> None:
        """Run this node's HA loop now instead of within loop_wait.

        Patroni wakes its loop after any PATCH /config it serves; this one writes back
        the current ttl, so it changes nothing in the DCS.
        """
        ttl = self.config().get("ttl")
        if ttl is not None:
            self.patch_config({"ttl": ttl})


def members_table(cluster: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows like `patronictl list`: name, role, state, timeline, lag."""
    rows = []
    for m in cluster.get("members", []):
        lag = m.get("lag", m.get("receive_lag", 0))
        rows.append({"name": m.get("name"), "host": m.get("host"), "role": m.get("role"),
                     "state": m.get("state"), "timeline": m.get("timeline"),
                     "lag": 0 if lag in (None, "") else lag})
    return sorted(rows, key=lambda r: str(r["name"]))
