"""The pull-request comment: warnings, the plan, the table of changes, the raw diff folded.

GitHub rejects a comment over 65536 characters, so the raw `--diff` is cut to fit (its
end kept, where the summary and errors are).
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from dataclasses import dataclass

from review.plan import Plan
from review.preview import (
    CREATE,
    DELETE,
    REPLACE,
    SAME,
    UPDATE,
    PolicyViolation,
    Preview,
    Step,
    policy_violations,
)
from review.properties import MISSING, Change, step_changes, text
from review.resources import INSTALL_PARTS, KINDS, describe, install_part, is_logical, kind, named, scope_of

MAX_COMMENT = 65000
OP_ORDER = (CREATE, REPLACE, UPDATE, DELETE)
OP_WORDS = {CREATE: "+ create", REPLACE: "+- replace", UPDATE: "~ update", DELETE: "- delete"}
SUMMARY_WORDS = {CREATE: "to create", REPLACE: "to replace", UPDATE: "to update", DELETE: "to delete"}


def marker(stack: str) -> str:
    """The hidden line that finds this stack's comment again on the next push."""
    return f"<!-- pgha-review:{stack} -->"


@dataclass(frozen=True)
class Row:
    op: str
    resource: str
    prop: str
    old: str
    new: str


def code(value: str) -> str:
    """`value` as a Markdown code span inside a table cell (pipes and backticks made safe)."""
    if not value:
        return ""
    value = value.replace("|", "\\|")
    fence = "``" if "`" in value else "`"
    pad = " " if value.startswith("`") or value.endswith("`") else ""
    return f"{fence}{pad}{value}{pad}{fence}"


def _cell(change: Change, side: str) -> str:
    value = change.old if side == "old" else change.new
    if value is MISSING:
        return ""
    if change.secret:
        return "*secret*" if side == "old" else "*changed (value hidden)*"
    return code(text(value))


def _script_lines(change: Change) -> list[tuple[str, str]]:
    """The lines that differ between two multi-line scripts, paired old → new."""
    if change.secret or not (isinstance(change.old, str) and isinstance(change.new, str)):
        return []
    old, new = change.old.splitlines(), change.new.splitlines()
    if len(old) < 2 and len(new) < 2:
        return []
    pairs: list[tuple[str, str]] = []
    for op, a1, a2, b1, b2 in difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_opcodes():
        if op == "equal":
            continue
        left, right = old[a1:a2], new[b1:b2]
        for i in range(max(len(left), len(right))):
            pairs.append((" ".join(left[i].split()) if i < len(left) else "",
                          " ".join(right[i].split()) if i < len(right) else ""))
    return pairs


def _rows_for(step: Step, scope: str) -> list[Row]:
    resource = str(named(step, scope))
    if step.op == CREATE:
        return [Row(step.op, resource, "", "", code(describe(step)))]
    if step.op == DELETE:
        return [Row(step.op, resource, "", code(describe(step)), "")]
    found = step_changes(step)
    replaced = set(step.replace_reasons)
    rows = []
    for change in found.changes:
        prop = change.path + (" (forces replace)" if change.top in replaced else "")
        script = _script_lines(change)
        if script:  # an install script: its changed lines, not two copies of its start
            label = code(f"{prop} (line)")
            rows.extend(Row(step.op, resource, label, code(old), code(new)) for old, new in script)
            continue
        rows.append(Row(step.op, resource, code(prop), _cell(change, "old"), _cell(change, "new")))
    if not rows:
        inert = ", ".join(sorted({re.split(r"[.\[]", p, maxsplit=1)[0] for p in step.diff_reasons}))
        note = f"*({inert}: not acted on by the provider)*" if inert else "*(no visible input change)*"
        rows.append(Row(step.op, resource, note, "", ""))
    return rows


def _install_row(op: str, parts: dict[str, Step], scope: str) -> Row:
    """A host's install created or removed: one row (its steps named), not one per step."""
    main = parts.get("patroni") or parts.get("cleanup") or next(iter(parts.values()))
    what = f"{describe(main)} (steps: {', '.join(p for p in INSTALL_PARTS if p in parts)})"
    resource = str(named(main, scope, with_part=False))
    return Row(op, resource, "", "", code(what)) if op == CREATE else Row(op, resource, "", code(what), "")


def table_rows(preview: Preview) -> list[Row]:
    scope = scope_of(preview)

    def order(step: Step) -> tuple[int, int, tuple[int, str], int]:
        k = kind(step, scope)
        rank = KINDS.index(k) if k in KINDS else len(KINDS)
        op = OP_ORDER.index(step.op) if step.op in OP_ORDER else len(OP_ORDER)
        part = install_part(step, scope)
        step_rank = INSTALL_PARTS.index(part[1]) if part else 0
        return op, rank, preview.host_key(named(step, scope).short), step_rank

    steps = sorted((s for s in preview.changes if not is_logical(s)), key=order)
    # A host's install created or removed is one row, where its first step sorts.
    entries: list[Row | tuple[str, str]] = []
    installs: dict[tuple[str, str], dict[str, Step]] = {}
    for step in steps:
        part = install_part(step, scope)
        if part and step.op in (CREATE, DELETE):
            key = (step.op, part[0])
            if key not in installs:
                entries.append(key)
            installs.setdefault(key, {})[part[1]] = step
        else:
            entries.extend(_rows_for(step, scope))
    return [e if isinstance(e, Row) else _install_row(e[0], installs[e], scope) for e in entries]


def counts_line(preview: Preview) -> str:
    ops = Counter(s.op for s in preview.steps if not is_logical(s))
    parts = [f"{ops[op]} {SUMMARY_WORDS[op]}" for op in OP_ORDER if ops[op]]
    if ops[SAME]:
        parts.append(f"{ops[SAME]} unchanged")
    return " · ".join(parts)


def render_table(rows: list[Row]) -> list[str]:
    out = ["| Action | Resource | Property | Old | New |", "|---|---|---|---|---|"]
    last = ("", "")
    for row in rows:
        first = (row.op, row.resource) != last
        last = (row.op, row.resource)
        action = OP_WORDS.get(row.op, row.op) if first else ""
        resource = f"**{row.resource}**" if first else ""
        out.append(f"| {action} | {resource} | {row.prop} | {row.old} | {row.new} |")
    return out


def _diff_block(diff: str, room: int) -> list[str]:
    if not diff.strip():
        return []
    body = diff.rstrip("\n").replace("```", "`\u200b``")
    head = ["<details><summary>pulumi preview --diff</summary>", "", "```diff"]
    tail = ["```", "", "</details>"]
    overhead = sum(len(x) + 1 for x in head + tail) + 80
    if len(body) + overhead > room:
        keep = max(room - overhead, 0)
        body = (f"… (the first {len(body) - keep} characters are cut: `make review STACK=<stack>` writes "
                f"all of it)\n" + body[-keep:])
    return [*head, body, *tail]


def _violation(v: PolicyViolation) -> str:
    return f"- 🛡️ **Policy {v.policy}** ({v.level}): {v.message or v.description}"


def render(preview: Preview, plan: Plan, stack: str, diff: str = "") -> str:
    """The whole comment for one stack; policy findings come from the `--diff` text."""
    lines = [marker(stack), f"## pgha preview: `{stack}`", ""]
    violations = policy_violations(diff)
    if plan.no_changes:
        lines += ["**No changes.** `pulumi up` would not touch any host.", ""]
    else:
        lines += [f"**{counts_line(preview)}**", ""]
    if plan.concerns or violations:
        lines += ["### Warnings", ""]
        lines += [_violation(v) for v in violations]
        lines += [f"- ⚠️ **{c.topic}**: {c.text}" for c in plan.concerns]
        lines.append("")
    if plan.lines:
        lines += [f"### Plan (`pulumi {'destroy' if plan.destroy else 'up'}` order)", ""]
        lines += [f"{i}. {line}" for i, line in enumerate(plan.lines, 1)]
        lines += ["", f"**{plan.expect}**", ""]
        lines += ["### Changes", ""]
        lines += render_table(table_rows(preview))
    text_ = "\n".join(lines).rstrip("\n") + "\n"
    block = _diff_block(diff, MAX_COMMENT - len(text_))
    return text_ + ("\n" + "\n".join(block) + "\n" if block else "")


def error_lines(log: str) -> list[str]:
    """The `error: ...` lines of a preview's output, each once, with their indented continuation."""
    found: list[str] = []
    current: list[str] = []
    for line in log.splitlines():
        if line.startswith("error:"):
            current = [line]
            found.append("")
        elif current and line.startswith("  ") and line.strip():
            current.append(line)
        else:
            current = []
            continue
        found[-1] = "\n".join(current)
    return list(dict.fromkeys(found))


def render_failure(stack: str, errors: list[str], log: str) -> str:
    """The comment when `pulumi preview` failed: what failed, nothing else to review."""
    errors = [e.strip() for e in errors if e.strip()] or error_lines(log)
    violations = policy_violations(log)
    lines = [marker(stack), f"## pgha preview: `{stack}` — ❌ the preview failed", "",
             "`pulumi preview` exited with an error, so there is no plan to review. Fix what the error "
             "names (a stack config key, a policy, the backend, the passphrase) and push again.", ""]
    if violations:
        lines += [_violation(v) for v in sorted(violations, key=lambda v: v.level != "mandatory")] + [""]
    if errors:
        lines += ["```text", *(e.replace("```", "`\u200b``") for e in errors), "```", ""]
    if log.strip():
        room = MAX_COMMENT - sum(len(x) + 1 for x in lines) - 200
        body = log.rstrip().replace("```", "`\u200b``")
        if len(body) > room:
            body = "…\n" + body[-room:]
        lines += ["<details><summary>preview output</summary>", "", "```text", body, "```", "",
                  "</details>", ""]
    return "\n".join(lines)
