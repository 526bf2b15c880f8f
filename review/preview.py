"""Read `pulumi preview --json` (the CLI's preview digest) into typed steps.

The digest has `steps` (one per resource the engine would touch; `same` steps only with
`--show-sames`), `diagnostics` and `changeSummary`. Each step carries the resource's old and
new state as the CLI serialises it: secrets are blinded (`[secret]`), values a preview cannot
know are the unknown sentinel, and a dynamic provider's pickled `__provider` is an input.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any

# Operations as the digest spells them (pkg/resource/deploy/step.go).
CREATE, UPDATE, DELETE, REPLACE, SAME = "create", "update", "delete", "replace", "same"
CREATE_REPLACEMENT, DELETE_REPLACED = "create-replacement", "delete-replaced"
REPLACEMENT_STEPS = frozenset({CREATE_REPLACEMENT, DELETE_REPLACED, "discard-replaced", "import-replacement"})


# `    pgha@v0.1.0 [advisory]  etcd-odd-members  (pulumi:pulumi:Stack: pgha-lab)Stacks run ...`
_VIOLATION = re.compile(r"^\s*(?P<pack>\S+@v\S+) \[(?P<level>[a-z-]+)\]\s+(?P<policy>\S+)\s+"
                        r"\((?P<resource>[^)]*)\)(?P<description>.*)$")
_AFTER_VIOLATIONS = ("error:", "Resources:", "Policy Packs run:", "Outputs:", "Diagnostics:")


class PreviewFormatError(ValueError):
    """The text is not a preview digest."""


@dataclass(frozen=True)
class Diagnostic:
    severity: str
    message: str
    urn: str = ""


@dataclass(frozen=True)
class Step:
    op: str
    urn: str
    kind: str  # the type's last segment: EtcdMember, PatroniNode, ...
    name: str  # the resource name in the URN
    type: str = ""
    custom: bool = True  # False for components and the stack
    old_inputs: dict[str, Any] | None = None
    new_inputs: dict[str, Any] | None = None
    old_outputs: dict[str, Any] | None = None
    detailed_diff: dict[str, str] = field(default_factory=dict)  # property path -> kind
    diff_reasons: tuple[str, ...] = ()
    replace_reasons: tuple[str, ...] = ()

    @property
    def inputs(self) -> dict[str, Any]:
        """The inputs `up` acts on: the new ones, or the stored ones for a delete."""
        return self.new_inputs if self.new_inputs is not None else (self.old_inputs or {})

    @property
    def changed(self) -> bool:
        return self.op not in (SAME, "read")


@dataclass(frozen=True)
class Preview:
    steps: tuple[Step, ...]
    diagnostics: tuple[Diagnostic, ...] = ()
    change_summary: dict[str, int] = field(default_factory=dict)
    host_order: tuple[str, ...] = ()  # pgha:hosts as the stack config lists them

    def host_key(self, host: str) -> tuple[int, str]:
        """Sort key: config order, then by name (a removed host is not in the config)."""
        order = self.host_order.index(host) if host in self.host_order else len(self.host_order)
        return order, host

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "warning"]

    def of_kind(self, kind: str) -> list[Step]:
        return [s for s in self.steps if s.kind == kind]

    @property
    def changes(self) -> list[Step]:
        return [s for s in self.steps if s.changed]

    @property
    def has_sames(self) -> bool:
        """Whether the whole stack is listed: unchanged resources too (`--show-sames`), or a preview
        where every resource is created (a new stack) or deleted (a destroy)."""
        ops = {s.op for s in self.steps if s.custom}
        return SAME in ops or ops <= {CREATE} or ops <= {DELETE}


def kind_of(type_token: str) -> str:
    """`pulumi-python:dynamic/pgha:EtcdMember` or `pgha:index:EtcdCluster` -> the last segment."""
    return type_token.rsplit(":", 1)[-1]


def urn_parts(urn: str) -> tuple[str, str]:
    """(type token, name) of `urn:pulumi:<stack>::<project>::<parent$...$type>::<name>`."""
    parts = urn.split("::")
    if len(parts) < 4:
        return "", urn
    return parts[2].rsplit("$", 1)[-1], "::".join(parts[3:])


def _state(step: dict[str, Any], which: str) -> dict[str, Any] | None:
    state = step.get(which)
    return state if isinstance(state, dict) else None


def _step(raw: dict[str, Any]) -> Step:
    urn = str(raw.get("urn", ""))
    type_token, name = urn_parts(urn)
    old, new = _state(raw, "oldState"), _state(raw, "newState")
    type_token = (new or old or {}).get("type") or type_token
    diff = raw.get("detailedDiff") or {}
    return Step(
        op=str(raw.get("op", "")),
        urn=urn,
        kind=kind_of(type_token),
        name=name,
        type=type_token,
        custom=bool((new or old or {}).get("custom", True)),
        old_inputs=(old.get("inputs") or {}) if old is not None else None,
        new_inputs=(new.get("inputs") or {}) if new is not None else None,
        old_outputs=(old.get("outputs") or {}) if old is not None else None,
        detailed_diff={str(k): str((v or {}).get("kind", "")) for k, v in diff.items()},
        diff_reasons=tuple(str(k) for k in raw.get("diffReasons") or ()),
        replace_reasons=tuple(str(k) for k in raw.get("replaceReasons") or ()),
    )


def _merge_replacements(steps: list[Step]) -> list[Step]:
    """`--show-replacement-steps` splits a replace into create-replacement/delete-replaced: one step."""
    merged: list[Step] = []
    by_urn: dict[str, int] = {}
    for step in steps:
        if step.op not in REPLACEMENT_STEPS:
            by_urn.setdefault(step.urn, len(merged))
            merged.append(step)
            continue
        if step.urn in by_urn:
            continue  # the logical `replace` step already stands for it
        by_urn[step.urn] = len(merged)
        merged.append(dataclasses.replace(step, op=REPLACE))
    return merged


def parse_preview(text: str) -> Preview:
    """Parse the digest; text before the JSON (a stray warning line) is skipped."""
    start = text.find("{")
    if start < 0:
        raise PreviewFormatError("no JSON object in the preview output")
    try:
        doc = json.loads(text[start:])
    except json.JSONDecodeError as err:
        raise PreviewFormatError(f"the preview output is not JSON: {err}") from err
    if not isinstance(doc, dict):
        raise PreviewFormatError("the preview output is not a JSON object")
    steps = [_step(s) for s in doc.get("steps") or () if isinstance(s, dict)]
    diagnostics = tuple(
        Diagnostic(severity=str(d.get("severity", "")), message=str(d.get("message", "")).strip(),
                   urn=str(d.get("urn", "")))
        for d in doc.get("diagnostics") or () if isinstance(d, dict))
    summary = {str(k): int(v) for k, v in (doc.get("changeSummary") or {}).items()}
    return Preview(steps=tuple(_merge_replacements(steps)), diagnostics=diagnostics, change_summary=summary,
                   host_order=_host_order(doc.get("config") or {}))


def _host_order(config: dict[str, Any]) -> tuple[str, ...]:
    """Host names from the digest's config (`pgha:hosts`, a JSON string), in config order."""
    try:
        hosts = json.loads(config.get("pgha:hosts") or "[]")
    except (TypeError, json.JSONDecodeError):
        return ()
    if not isinstance(hosts, list):
        return ()
    return tuple(str(h["name"]) for h in hosts if isinstance(h, dict) and isinstance(h.get("name"), str))


@dataclass(frozen=True)
class PolicyViolation:
    """A policy pack's finding. The JSON digest drops policy events, so these come from the
    text of `pulumi preview --diff` (the same run with `--policy-pack`)."""

    pack: str
    level: str  # advisory | mandatory | remediate...
    policy: str
    resource: str
    description: str
    message: str


def policy_violations(text: str) -> list[PolicyViolation]:
    """The violations `pulumi preview` printed: a header line, then the message lines."""
    found: list[PolicyViolation] = []
    header: re.Match[str] | None = None
    message: list[str] = []

    def flush() -> None:
        if header is not None:
            found.append(PolicyViolation(
                pack=header["pack"], level=header["level"], policy=header["policy"],
                resource=header["resource"], description=header["description"].strip(),
                message=" ".join(message).strip()))

    for line in text.splitlines():
        match = _VIOLATION.match(line)
        if match is not None:
            flush()
            header, message = match, []
        elif header is not None and line.strip() and not line.startswith(_AFTER_VIOLATIONS):
            message.append(line.strip())
        elif header is not None:
            flush()
            header, message = None, []
    flush()
    return list(dict.fromkeys(found))
