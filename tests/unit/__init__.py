"""Unit tests of pgha's pure layer: config model, specs, templates, diffs (no hosts, no Pulumi CLI)."""
