"""The pgha policy pack, run as `pulumi preview --policy-pack policy`
(with `--policy-pack-config policy/config/<stack>.json` to change levels per stack).

Every rule of pgha_checks.RULES becomes a stack policy over the planned resources. Whether the stack
is a production one comes from the stack's own `pgha:production`: the engine hands each policy pack
the stack's configuration (Python's language host passes it as PULUMI_CONFIG, which pulumi.Config
reads), so the pack judges by the same value the program validated. A rule scoped to production
stacks reports itself not applicable on other stacks, and the reverse. If the stack's configuration
did not reach the pack (no `pgha:scope`, which every pgha stack sets), production rules apply.
"""

from __future__ import annotations

import pulumi
from pgha_checks import EVERY_STACK, RULES, Resource, Rule, Stack
from pulumi_policy import (
    EnforcementLevel,
    PolicyPack,
    ReportViolation,
    StackValidationArgs,
    StackValidationPolicy,
)


def production_stack() -> bool:
    """`pgha:production` of the stack being previewed; true when the pack cannot see the stack's config."""
    config = pulumi.Config("pgha")
    if config.get("scope") is None:
        return True
    return bool(config.get_bool("production"))


def stack_policy(rule: Rule) -> StackValidationPolicy:
    def validate(args: StackValidationArgs, report_violation: ReportViolation) -> None:
        production = production_stack()
        if not rule.applies(production):
            args.not_applicable(f"pgha:production is {str(production).lower()}; "
                                f"this rule is for {rule.scope} stacks")
        stack = Stack(Resource(r.resource_type, r.urn, r.props) for r in args.resources)
        for violation in rule.check(stack):
            report_violation(violation.message, violation.urn)

    scope = "" if rule.scope == EVERY_STACK else f" ({rule.scope} stacks only)"
    return StackValidationPolicy(
        name=rule.name,
        description=rule.description,
        enforcement_level=EnforcementLevel(rule.level),
        validate=validate,
        remediation_steps=f"Change the stack config key named in the message{scope}.",
    )


PolicyPack(
    name="pgha",
    enforcement_level=EnforcementLevel.ADVISORY,
    policies=[stack_policy(rule) for rule in RULES],
    description="pgha stacks that are valid but unwise; production rules follow pgha:production.",
)
