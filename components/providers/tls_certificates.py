"""TlsCertificateAuthority and TlsCertificate: key material as stack resources (no host involved).

Both live only in the state: `create` makes the key and the certificate, `read` (refresh) reads
the facts back from the stored certificate, `delete` has nothing to remove. Private keys are
outputs the resources mark secret (`additional_secret_outputs`), so the state holds them
encrypted with the stack's passphrase or secrets provider, never in plaintext.

Renewal is a diff, decided by components/tls_plan.py with the clock of the preview:

- a certificate is replaced (new key, new certificate) when it expires within
  ``renew_before_days``, when its names or usage changed, or when the CA it must chain to is no
  longer the one that signed it; the replace names the reason's property (``not_after``,
  ``dns_names``/``ip_addresses``, ``ca_cert_pem``);
- the CA is **rotated in place** (an update, not a replace) when it can no longer sign a host
  certificate for a full term, or when its name changes: the new CA's certificate goes out
  beside the old one in ``trust_pem`` (both trusted) until the old one expires, so hosts can
  move to certificates of the new CA one at a time.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pulumi.dynamic import CreateResult, DiffResult, ReadResult, ResourceProvider, UpdateResult

from components import tls
from components.tls_plan import ca_renewal_reasons, renewal_reasons

# A value the preview does not know yet (an output of a resource being created, replaced or
# updated): the SDK hands it to a diff as pulumi.output.Unknown, or as its wire sentinel.
UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"


def _is_unknown(value: Any) -> bool:
    from pulumi.output import Unknown

    return isinstance(value, Unknown) or value == UNKNOWN


def _facts(cert_pem: str) -> dict[str, Any]:
    info = tls.inspect(cert_pem)
    return {"not_after": info.not_after.isoformat(), "serial": info.serial,
            "fingerprint": info.fingerprint, "issuer": info.issuer}


def request_of(props: dict[str, Any]) -> tls.CertificateRequest:
    return tls.CertificateRequest(
        common_name=props["common_name"], dns_names=tuple(props.get("dns_names") or ()),
        ip_addresses=tuple(props.get("ip_addresses") or ()), server=bool(props.get("server")),
        client=bool(props.get("client")), validity_days=int(props["validity_days"]))


class _StateOnlyProvider(ResourceProvider):
    """Shared by both: numbers back to ints, and a refresh that only re-reads the certificate."""

    serialize_as_secret_always = False
    OUTPUTS: ClassVar[frozenset[str]] = frozenset()
    clock = staticmethod(tls.utcnow)

    @staticmethod
    def _ints(props: dict[str, Any]) -> dict[str, Any]:
        return {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in props.items()}

    def changed(self, olds: dict[str, Any], news: dict[str, Any]) -> list[str]:
        keys = {k for k in set(olds) | set(news) if not k.startswith("__")} - self.OUTPUTS
        olds, news = self._ints(olds), self._ints(news)
        return sorted(k for k in keys if olds.get(k) != news.get(k))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        props = self._ints(props)
        if props.get("cert_pem"):
            props.update(_facts(props["cert_pem"]))
        return ReadResult(id_, props)


class CertificateAuthorityProvider(_StateOnlyProvider):
    OUTPUTS = frozenset({"cert_pem", "key_pem", "trust_pem", "previous_cert_pem", "not_after", "serial",
                         "fingerprint", "issuer", "rotated"})

    def _new(self, props: dict[str, Any], trusted: str | None) -> dict[str, Any]:
        """A new CA; every CA of `trusted` (the bundle so far) that is still valid stays trusted
        after it (`previous_cert_pem`): a certificate one of them signed may still be in use."""
        now = self.clock()
        ca = tls.create_ca(props["common_name"], int(props["validity_days"]), now=now)
        keep = tls.still_valid(trusted, now) if trusted else ""
        return {**self._ints(props), "cert_pem": ca.cert_pem, "key_pem": ca.key_pem,
                "previous_cert_pem": keep or None,
                "trust_pem": tls.bundle(ca.cert_pem, *([keep] if keep else [])),
                **_facts(ca.cert_pem)}

    def create(self, props: dict[str, Any]) -> CreateResult:
        outs = self._new(props, None)
        return CreateResult(id_=f"ca/{outs['fingerprint'][:23]}", outs={**outs, "rotated": None})

    def rotation_reasons(self, olds: dict[str, Any], news: dict[str, Any]) -> list[str]:
        reasons = ca_renewal_reasons(tls.inspect(olds["cert_pem"]), now=self.clock(),
                                     host_validity_days=int(news["host_validity_days"]))
        if olds.get("common_name") != news.get("common_name"):
            reasons.append(f"the CA's name changed: {olds.get('common_name')} -> {news.get('common_name')}")
        return reasons

    def previous_expired(self, olds: dict[str, Any]) -> bool:
        """Whether a previous CA still in the trust bundle has expired (it then leaves it)."""
        previous = olds.get("previous_cert_pem")
        return bool(previous) and tls.still_valid(previous, self.clock()) != tls.bundle(previous)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = self.changed(olds, news)
        if self.rotation_reasons(olds, news) or self.previous_expired(olds):
            # In place: the old CA stays trusted beside the new one (see the module's docstring).
            return DiffResult(changes=True, replaces=[], delete_before_replace=False)
        return DiffResult(changes=bool(changed), replaces=[], delete_before_replace=False)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        reasons = self.rotation_reasons(olds, news)
        if reasons:
            trusted = tls.bundle(olds["cert_pem"], *filter(None, [olds.get("previous_cert_pem")]))
            return UpdateResult(outs={**self._new(news, trusted),
                                      "rotated": "; ".join(reasons)})
        outs = {**{k: olds.get(k) for k in self.OUTPUTS}, **self._ints(news)}
        if self.previous_expired(olds):
            keep = tls.still_valid(olds["previous_cert_pem"], self.clock())
            outs.update(previous_cert_pem=keep or None,
                        trust_pem=tls.bundle(olds["cert_pem"], *([keep] if keep else [])))
        return UpdateResult(outs=outs)


class CertificateProvider(_StateOnlyProvider):
    OUTPUTS = frozenset({"cert_pem", "key_pem", "not_after", "serial", "fingerprint", "issuer"})
    # The inputs whose change (or whose reason) means a new certificate.
    REASON_KEYS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("expire", "not_after"), ("names changed", "dns_names"), ("addresses changed", "ip_addresses"),
        ("subject changed", "common_name"), ("usage changed", "server"), ("another CA", "ca_cert_pem"))

    def _issue(self, props: dict[str, Any]) -> dict[str, Any]:
        props = self._ints(props)
        issued = tls.issue(tls.KeyAndCertificate(props["ca_key_pem"], props["ca_cert_pem"]),
                           request_of(props), now=self.clock())
        return {**props, "cert_pem": issued.cert_pem, "key_pem": issued.key_pem, **_facts(issued.cert_pem)}

    def create(self, props: dict[str, Any]) -> CreateResult:
        outs = self._issue(props)
        return CreateResult(id_=f"cert/{props['name']}/{outs['serial']}", outs=outs)

    def reasons(self, olds: dict[str, Any], news: dict[str, Any]) -> list[str]:
        """Why the stored certificate cannot stay (components/tls_plan.py), at the diff's clock."""
        news = self._ints(news)
        ca = news.get("ca_cert_pem")
        if _is_unknown(ca):
            return ["issued by another CA (the CA is being created or rotated)"]
        issuer_ok = tls.issued_by(olds["cert_pem"], ca) if ca else True
        return renewal_reasons(tls.inspect(olds["cert_pem"]), request_of(news), issuer_matches=issuer_ok,
                               now=self.clock(), renew_before_days=int(news["renew_before_days"]))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        if not olds.get("cert_pem"):
            return DiffResult(changes=True, replaces=["cert_pem"], delete_before_replace=False)
        reasons = self.reasons(olds, news)
        changed = self.changed(olds, news)
        if reasons:
            replaces = sorted({key for reason in reasons for fragment, key in self.REASON_KEYS
                               if fragment in reason})
            return DiffResult(changes=True, replaces=replaces or ["cert_pem"], delete_before_replace=False)
        # No reason for new key material (say a lifetime or a renewal window changed): the
        # certificate stays, and the new setting applies at its next renewal.
        return DiffResult(changes=bool(changed), replaces=[], delete_before_replace=False)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs={**{k: olds.get(k) for k in self.OUTPUTS}, **self._ints(news)})

