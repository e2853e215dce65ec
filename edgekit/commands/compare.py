"""Set two edgekit reports side by side: variants matched by name, latency ratio B/A with a 95%
confidence interval from the raw timing samples, peak memory, size, drift and task accuracy.
Works for two runs on one machine and for two devices (laptop vs Pi). With one report, each
variant is compared with its float root (the end of its `parent` chain).

Regression gates for CI: exit code 1 when a gate trips, 0 otherwise, 2 for unusable input.
  --fail-if-slower PCT   B's median latency is more than PCT percent above A's, and the 95% CI of
                         the ratio B/A lies above 1 (a significant slowdown)
  --fail-if-drift BOUND  cosine_min of a compared B variant is below BOUND. cosine_min is the worst
                         cosine similarity, over the evaluation samples, between the variant's
                         outputs and the fp32 reference outputs (1.0 = identical)
  --fail-if-larger PCT   B's model file (with external data) is more than PCT percent larger than A's

Two runs on a shared machine can differ by tens of percent for every variant alike (the machine,
not the model, changed). --normalize compares each variant's latency relative to its own report's
fp32, measured interleaved in the same run, so such drift cancels: use it for the slower-gate in CI
on shared runners; leave it off to compare two devices.
"""

from __future__ import annotations

import argparse
import sys

HELP = "compare two reports (or one report's variants with their float root); regression gates"


def _percent(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"a percentage of 0 or more, not {text}")
    return value


def _bound(text: str) -> float:
    value = float(text)
    if not -1 <= value <= 1:
        raise argparse.ArgumentTypeError(f"a cosine similarity bound in [-1, 1], not {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("reports", nargs="+", metavar="REPORT", help="A.json [B.json] (or folders)")
    parser.add_argument(
        "--format",
        choices=("terminal", "md"),
        default="terminal",
        help="terminal table (default) or a Markdown table for a pull-request comment",
    )
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON")
    parser.add_argument("--fail-if-slower", type=_percent, metavar="PCT")
    parser.add_argument("--fail-if-drift", type=_bound, metavar="BOUND")
    parser.add_argument("--fail-if-larger", type=_percent, metavar="PCT")
    parser.add_argument(
        "--normalize",
        action="store_true",
        help="compare latencies relative to each report's own fp32 (cancels machine drift)",
    )


def run(args) -> int:
    from edgekit import textsafe
    from edgekit.errors import EdgekitError
    from edgekit.report import markdown, terminal
    from edgekit.report.compare import compare_reports
    from edgekit.report.schema import json_text

    if len(args.reports) > 2:
        raise EdgekitError("edgekit compare takes one or two reports (A.json [B.json]).")
    result = compare_reports(
        *args.reports,
        fail_if_slower=args.fail_if_slower,
        fail_if_drift=args.fail_if_drift,
        fail_if_larger=args.fail_if_larger,
        normalize=args.normalize,
    )
    if args.json:
        sys.stdout.write(json_text(result))
    elif args.format == "md":
        print(markdown.comparison(result), end="")
    else:
        terminal.show_comparison(result)
    if args.json or args.format == "md":
        # stdout may be going to a file or a PR comment: CI logs still show which gate tripped
        for gate in result["gates"]:
            if gate["tripped"]:
                print(f"edgekit: gate tripped: {textsafe.plain(gate['message'])}", file=sys.stderr)
    return result["exit_code"]
