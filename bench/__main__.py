"""`python -m bench [--only B1,B2,...] [--out bench/out]`: run the benchmarks, write the report.

Needs root (it boots lab hosts). It refuses to start while a lab is up, because Lab.up would
tear down someone else's hosts; --take-over-lab says that lab may go. The lab is taken down and
every scratch file removed on the way out, whatever happened.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.deploy import Session
from bench.report import write_report
from bench.scenarios import EXECUTION_ORDER, SCENARIOS
from bench.timing import log
from lab import Lab
from tests.conftest import ROOT

PULUMI = ROOT / ".tools" / "bin" / "pulumi"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(sorted(SCENARIOS)),
                        help="comma-separated benchmarks to run (default: all of B1..B8)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out",
                        help="directory for report.md, report.json and the charts (default: bench/out)")
    parser.add_argument("--take-over-lab", action="store_true",
                        help="run even though a lab is up (it will be torn down)")
    args = parser.parse_args(argv)
    args.only = [b.strip().upper() for b in args.only.split(",") if b.strip()]
    unknown = [b for b in args.only if b not in SCENARIOS]
    if unknown or not args.only:
        parser.error(f"unknown benchmark(s) {', '.join(unknown) or '(none given)'}; "
                     f"choose from {', '.join(sorted(SCENARIOS))}")
    return args


def _output(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=30,
                              check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def run_metadata(only: list[str]) -> dict[str, Any]:
    commit = _output(["git", "rev-parse", "--short", "HEAD"])
    dirty = bool(_output(["git", "status", "--porcelain", "--untracked-files=no"]))
    return {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": f"{commit}{' (with uncommitted changes)' if dirty else ''}",
        "pulumi": _output([str(PULUMI), "version"]),
        "machine": f"{platform.node()}, {os.cpu_count()} CPUs",
        "benchmarks": ", ".join(only),
    }


def preflight(args: argparse.Namespace) -> str | None:
    """Why the run cannot start, or None."""
    if os.geteuid() != 0:
        return "needs root: it boots lab hosts (systemd-nspawn, a bridge)"
    if not PULUMI.exists():
        return f"no Pulumi CLI at {PULUMI}: run `make setup`"
    if not args.take_over_lab:
        try:
            Lab.load()
        except RuntimeError:
            return None
        return ("a lab is up (someone's tests?): the bench boots its own hosts and would tear it down; "
                "wait for it to finish, or pass --take-over-lab")
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = preflight(args)
    if problem:
        print(f"bench: {problem}", file=sys.stderr)
        return 2
    out = args.out.resolve()
    results: dict[str, Any] = {"meta": run_metadata(args.only), "benchmarks": {}}
    session = Session()
    try:
        for ident in [b for b in EXECUTION_ORDER if b in args.only]:
            results["benchmarks"][ident] = SCENARIOS[ident](session)
            write_report(results, out)  # after each one: a later failure keeps what was measured
    finally:
        log("taking the lab down")
        session.close()
        results["meta"]["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        paths = write_report(results, out)
        log("wrote " + ", ".join(str(p) for p in paths.values()))
    failed = [b for b, r in results["benchmarks"].items() if r.get("error")]
    if failed:
        log(f"failed: {', '.join(failed)} (see report.md)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
