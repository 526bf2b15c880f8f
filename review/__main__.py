"""python -m review: `pulumi preview --json` in, a pull-request comment (Markdown) out.

    pulumi preview --json --show-sames --stack staging > preview.json
    pulumi preview --diff --stack staging > preview.diff
    python -m review preview.json --stack staging --diff preview.diff -o review.md

The JSON comes from a file or stdin (`-`). With `--failed LOG` (the preview exited non-zero)
the comment says so and shows the error. Exit status: 0 when the summary was written, 1 when
the preview failed (the failure comment is still written), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from review.markdown import render, render_failure
from review.plan import build_plan
from review.preview import PreviewFormatError, parse_preview


def _read(path: str) -> str:
    return sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8", errors="replace")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m review", description=__doc__.split("\n\n")[0])
    parser.add_argument("preview", nargs="?", default="-",
                        help="`pulumi preview --json` output (- for stdin)")
    parser.add_argument("--stack", default="stack", help="the stack's name, for the heading and the marker")
    parser.add_argument("--diff", metavar="FILE", help="`pulumi preview --diff` output, folded at the end")
    parser.add_argument("--failed", metavar="LOG", help="the preview failed; LOG holds what it printed")
    parser.add_argument("-o", "--output", metavar="FILE", help="write the comment here (default: stdout)")
    args = parser.parse_args(argv)

    try:
        raw = _read(args.preview)
        failed_log = Path(args.failed).read_text(encoding="utf-8", errors="replace") if args.failed else None
        diff = Path(args.diff).read_text(encoding="utf-8", errors="replace") if args.diff else ""
    except OSError as err:
        print(f"review: {err}", file=sys.stderr)
        return 2
    try:
        preview = parse_preview(raw)
    except PreviewFormatError as err:
        if failed_log is None:
            print(f"review: {err}", file=sys.stderr)
            return 2
        preview = None
    if failed_log is not None or (preview is not None and preview.errors):
        errors = [d.message for d in preview.errors] if preview is not None else []
        comment = render_failure(args.stack, errors, failed_log or "")
        status = 1
    else:
        assert preview is not None
        comment = render(preview, build_plan(preview), args.stack, diff)
        status = 0
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(comment, encoding="utf-8")
    else:
        sys.stdout.write(comment)
    return status


if __name__ == "__main__":
    sys.exit(main())
