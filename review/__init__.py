"""Review summaries of `pulumi preview --json` for pull requests (python -m review)."""
