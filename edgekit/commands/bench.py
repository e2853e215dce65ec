"""Benchmark ONNX models on this CPU and write a report.

Each model runs in its own worker process; their timed rounds are interleaved (A B C A B C ...) so
that machine drift hits all alike, until every median's 95% interval is within ±1% or --max-time is
spent. The first model is the baseline for the "vs base" column. Works without torch installed.

examples:
  edgekit bench model.onnx
  edgekit bench fp32.onnx int8.onnx --threads 1,2,4 -o results
  edgekit bench model.onnx --input ids:1x128:int64:0-30522 --json > report.json
  edgekit bench fp32.onnx int8.onnx --target ssh://pi@raspberrypi.local
  edgekit bench model.onnx --targets fleet.toml -o fleet   # several devices at once
  edgekit bench out/variants/int4/ out/variants/fp32/   # language-model folders (genai_config.json)
  edgekit bench out/variants/int4/ --target ssh://pi@raspberrypi.local

A language-model variant folder (genai_config.json, model.onnx, tokenizer: what `edgekit optimize`
makes of a causal LM) is timed the way llama.cpp's llama-bench reports: prompt tokens/s at 128 and
512 tokens (pp128, pp512), generation tokens/s over 128 tokens (tg128), time to first token and peak
RSS, with onnxruntime-genai (pip install onnxruntime-genai), torch-free; with --target, on that
device (its python3 needs onnxruntime-genai and numpy).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from edgekit.textsafe import plain, rich

if TYPE_CHECKING:
    from edgekit.report.schema import Report

HELP = "benchmark ONNX models or language-model folders (latency or tokens/s, memory) on this CPU"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "models",
        nargs="+",
        type=Path,
        metavar="MODEL.onnx",
        help="models to time (or language-model variant folders); the first is the baseline",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("edgekit-bench"),
        metavar="DIR",
        help="folder for report.json / report.md (default: ./edgekit-bench)",
    )
    parser.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="NAME:SHAPE:DTYPE",
        help="input spec, repeatable, e.g. image:1x3x224x224:float32 "
        "(default: read from the first model; axis 0 is the batch)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        metavar="FILE.npz",
        help="real inputs: arrays named after the model inputs (first batch used)",
    )
    parser.add_argument(
        "--threads",
        type=thread_list,
        metavar="N[,N...]",
        help="intra-op threads; several values sweep (default: physical cores)",
    )
    parser.add_argument(
        "--arena",
        choices=("on", "off"),
        default="on",
        help="onnxruntime CPU memory arena (default: on)",
    )
    parser.add_argument(
        "--min-time",
        type=seconds,
        default=2.0,
        metavar="S",
        help="seconds of timed runs per model, at least (default: 2)",
    )
    parser.add_argument(
        "--max-time",
        type=seconds,
        default=10.0,
        metavar="S",
        help="seconds of timed runs per model, at most (default: 10)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="add the top operators by time for each model (ORT profiling)",
    )
    lm = parser.add_argument_group("language-model folders")
    lm.add_argument(
        "--prompt-tokens",
        type=token_list,
        default=[128, 512],
        metavar="N[,N...]",
        help="prompt lengths for prompt processing tokens/s (default: 128,512)",
    )
    lm.add_argument(
        "--gen-tokens",
        type=lambda text: token_list(text)[0],
        default=128,
        metavar="N",
        help="tokens to generate for generation tokens/s (default: 128)",
    )
    add_target_arguments(parser, fleet=True)
    parser.add_argument("--json", action="store_true", help="print only the JSON report to stdout")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")


def add_target_arguments(parser, fleet: bool) -> None:
    """--target and friends (edgekit.ssh); `edgekit optimize` takes one target."""
    group = parser.add_argument_group("devices over SSH")
    group.add_argument(
        "--target",
        action="append" if fleet else "store",
        default=[] if fleet else None,
        metavar="ssh://[USER@]HOST[:PORT]",
        help="benchmark on this device instead (or a Host alias from ~/.ssh/config); it needs "
        "python3 with onnxruntime and numpy"
        + (
            ". Repeat for a fleet: one report per device in OUT/NAME/ and a summary"
            if fleet
            else ""
        ),
    )
    if fleet:
        group.add_argument(
            "--targets",
            type=Path,
            metavar="FILE",
            help='a fleet: one target per line, or TOML tables [name] with target = "ssh://…" '
            '(and optionally python = "…"). Exit code 1 if any device failed',
        )
    group.add_argument(
        "--remote-python",
        default="python3",
        metavar="PATH",
        help="the device's Python (default: python3), e.g. a venv's bin/python3",
    )
    group.add_argument(
        "--ssh-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="passed to ssh as -o KEY=VALUE (repeatable); the environment variable "
        "EDGEKIT_SSH_OPTIONS adds any ssh arguments. ssh runs with BatchMode=yes: set up keys",
    )


def parse_targets(args) -> list:
    from edgekit import ssh

    given = args.target if isinstance(args.target, list) else [args.target] * bool(args.target)
    targets = [ssh.parse_target(t, args.remote_python, args.ssh_option) for t in given]
    if getattr(args, "targets", None):
        targets += ssh.read_targets(args.targets, args.remote_python, args.ssh_option)
    return ssh.unique_names(targets)


# The argument types of the numeric options, defined once here; `edgekit optimize` uses them
# too. Their limits are edgekit.benchmark's, which BenchOptions enforces for Python callers.


def whole_number(text: str, what: str) -> int:
    """`text` as an int, else the ArgumentTypeError "expected a whole number of <what>"."""
    try:
        return int(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of {what}, got {text!r}"
        ) from None


def thread_count(text: str) -> int:
    """--threads N: a whole number from 1 to MAX_THREADS."""
    from edgekit.benchmark import MAX_THREADS

    value = whole_number(text, "threads like 1, 2 or 4")
    if not 1 <= value <= MAX_THREADS:
        raise argparse.ArgumentTypeError(
            f"{value} threads: give 1 to {MAX_THREADS}. onnxruntime starts one thread per count, "
            f"and more threads than this CPU's {os.cpu_count() or 'few'} logical cores only make "
            "it slower (and thousands stall the machine for minutes)"
        )
    return value


def thread_list(text: str) -> list[int]:
    """--threads N[,N...]: one or more thread counts, each as thread_count()."""
    parts = [t for t in text.split(",") if t.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"expected thread counts like 1,2,4, got {text!r}")
    return [thread_count(t) for t in parts]


def token_list(text: str) -> list[int]:
    """--prompt-tokens N[,N...] / --gen-tokens N: whole numbers of tokens from 1 to 1,048,576."""
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        values = []
    if not values or not all(1 <= v <= 1 << 20 for v in values):
        raise argparse.ArgumentTypeError(f"expected token counts like 128 or 128,512, got {text!r}")
    return values


def seconds(text: str) -> float:
    """--min-time / --max-time: a finite number of seconds above 0, at most MAX_SECONDS."""
    from edgekit.benchmark import MAX_SECONDS

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds like 2 or 0.5, got {text!r}") from None
    if not math.isfinite(value) or not 0 < value <= MAX_SECONDS:
        raise argparse.ArgumentTypeError(
            f"{text!r} seconds: give a number above 0 and at most {MAX_SECONDS:g} (an hour per "
            "model); the benchmark stops by these times"
        )
    return value


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    if any((Path(m) / "genai_config.json").is_file() for m in args.models):
        return _run_lm(args)

    from edgekit.api import bench
    from edgekit.benchmark import BenchOptions
    from edgekit.report import terminal

    options = BenchOptions(
        threads=args.threads,
        arena=args.arena == "on",
        min_time=args.min_time,
        max_time=args.max_time,
        profile=args.profile,
    )
    targets = parse_targets(args)
    if len(targets) > 1 or args.targets:
        return _fleet(args, targets, options)
    target = targets[0] if targets else None
    common = dict(inputs=args.input, data=args.data, out_dir=args.output, target=target)
    if args.quiet or args.json:
        report = bench(args.models, options, **common)
    else:
        with Console(stderr=True).status("benchmarking") as status:
            report = bench(args.models, options, progress=status.update, **common)

    if args.json:
        sys.stdout.write(report.text())
    elif not args.quiet:
        console = terminal.stdout_console()
        terminal.show_bench(report.to_json(), console)
        if target:
            console.print(f"measured on {plain(target.spec)}, over SSH", markup=False)
        console.print(f"[dim]report: {rich(args.output / 'report.json')}[/dim]")
    return _exit_code(report)


def _exit_code(report: Report) -> int:
    """1 when every model failed (each failure printed to stderr, where -q and --json still
    show it), else 0: a run that measured nothing is not a success."""
    rows = report.variants
    if any(not v.error for v in rows):
        return 0
    for v in rows:
        print(f"edgekit: error: {plain(v.name)} failed: {plain(v.error)}", file=sys.stderr)
    print(
        f"edgekit: error: every model failed ({len(rows)} of {len(rows)}); nothing was measured. "
        "The report holds the errors.",
        file=sys.stderr,
    )
    return 1


def _fleet(args, targets, options) -> int:
    """Every device at once; OUT/<name>/report.json each, OUT/summary.json and summary.md."""
    from edgekit.api import bench_fleet
    from edgekit.report import terminal
    from edgekit.report.schema import json_text

    if not args.quiet and targets:
        names = ", ".join(plain(t.name) for t in targets)
        print(f"benchmarking on {len(targets)} devices at once: {names}", file=sys.stderr)
    summary = bench_fleet(
        args.models, targets, options, inputs=args.input, data=args.data, out_dir=args.output
    )
    if args.json:
        sys.stdout.write(json_text(summary))
    elif not args.quiet:
        console = terminal.stdout_console()
        terminal.show_fleet(summary, console)
        console.print(f"[dim]summary: {rich(args.output / 'summary.md')}[/dim]")
    for device in summary["devices"]:
        if device["error"]:
            print(f"edgekit: error: {plain(device['error'])}", file=sys.stderr)
    return 1 if summary["failed"] else 0


def _run_lm(args: argparse.Namespace) -> int:
    """LM variant folders: tokens/s, TTFT and peak RSS with onnxruntime-genai; report.json."""
    from rich.console import Console

    from edgekit.errors import EdgekitError
    from edgekit.lm.bench import bench_lm

    others = [m for m in args.models if not (Path(m) / "genai_config.json").is_file()]
    if others:
        raise EdgekitError(
            f"{plain(others[0])} is not a language-model variant folder (no genai_config.json) "
            "while other arguments are: bench language-model folders and ONNX models in separate "
            "runs."
        )
    targets = parse_targets(args)
    if len(targets) > 1 or args.targets:
        raise EdgekitError(
            "--targets (or several --target) do not yet run language-model folders: give one "
            "--target at a time (one report per device)."
        )
    if args.threads and len(args.threads) > 1:
        raise EdgekitError(
            f"--threads {','.join(map(str, args.threads))}: give one thread count for "
            "language-model folders (a sweep is not supported for them yet)."
        )
    common = dict(
        threads=args.threads[0] if args.threads else None,
        prompt_lengths=args.prompt_tokens,
        gen_tokens=args.gen_tokens,
        min_time=args.min_time,
        max_time=args.max_time,
        out_dir=args.output,
        target=targets[0] if targets else None,
    )
    if args.quiet or args.json:
        report = bench_lm(args.models, **common)
    else:
        with Console(stderr=True).status("benchmarking") as status:
            report = bench_lm(args.models, on_progress=status.update, **common)
    data = report.to_json()
    if args.json:
        from edgekit.report.schema import json_text

        sys.stdout.write(json_text(data))
    elif not args.quiet:
        from edgekit.report import terminal

        console = terminal.stdout_console()
        terminal.show_report(data, console)
        rows = report.variants
        shared = set.intersection(*(set(v.notes) for v in rows)) if rows else set()
        for note in sorted(shared):
            console.print(f"[dim]{rich(note)}[/dim]")
        for row in report.variants:
            for note in row.notes:
                if note not in shared:
                    console.print(f"[dim]{rich(row.name)}: {rich(note)}[/dim]")
        if targets:
            console.print(f"measured on {plain(targets[0].spec)}, over SSH", markup=False)
        console.print(f"[dim]report: {rich(args.output / 'report.json')}[/dim]")
    failed = [v for v in report.variants if v.error]
    for row in failed:
        print(f"edgekit: error: {plain(row.name)} failed: {plain(row.error)}", file=sys.stderr)
    return 1 if len(failed) == len(report.variants) else 0
