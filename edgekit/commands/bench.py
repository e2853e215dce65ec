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
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from edgekit.errors import EdgekitError
from edgekit.textsafe import plain, rich

HELP = "benchmark ONNX models (latency, cold start, memory) on this CPU"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "models",
        nargs="+",
        type=Path,
        metavar="MODEL.onnx",
        help="models to time; the first is the baseline",
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
    add_target_arguments(parser, fleet=True)
    parser.add_argument("--json", action="store_true", help="print only the JSON report to stdout")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")


def add_target_arguments(parser, fleet: bool) -> None:
    """--target and friends (edgekit.bench.remote); `edgekit optimize` takes one target."""
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
    from edgekit.bench import remote

    given = args.target if isinstance(args.target, list) else [args.target] * bool(args.target)
    targets = [remote.parse_target(t, args.remote_python, args.ssh_option) for t in given]
    if getattr(args, "targets", None):
        targets += remote.read_targets(args.targets, args.remote_python, args.ssh_option)
    return remote.unique_names(targets)


# Limits of the numeric options, defined once here; `edgekit optimize` uses the same checks.
MAX_THREADS = 256
MAX_SECONDS = 3600.0


def thread_count(text: str) -> int:
    """--threads N: a whole number from 1 to MAX_THREADS."""
    try:
        value = int(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of threads like 1, 2 or 4, got {text!r}"
        ) from None
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


def seconds(text: str) -> float:
    """--min-time / --max-time: a finite number of seconds above 0, at most MAX_SECONDS."""
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


def check_times(min_time: float, max_time: float) -> None:
    """--max-time must leave room for --min-time."""
    if max_time < min_time:
        raise EdgekitError(
            f"--max-time {max_time:g} is less than --min-time {min_time:g}. Give "
            "--max-time at least as long as --min-time (seconds of timed runs per model)."
        )


def _check_model(path: Path) -> None:
    """Fail early and clearly on a file that is missing or is not an ONNX model."""
    import onnx
    from google.protobuf.message import DecodeError

    from edgekit.errors import EdgekitError

    if not path.is_file():
        raise EdgekitError(f"The model file {path} does not exist. Pass the path of an .onnx file.")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError, RuntimeError) as exc:
        model, reason = None, str(exc)
    else:
        reason = "it holds no graph"
    if model is None or model.ir_version == 0 or not model.graph.node:
        raise EdgekitError(
            f"The file {path} is not an ONNX model ({reason}). `edgekit bench` times .onnx files; "
            "run `edgekit optimize` to export a PyTorch model first."
        )


def _feeds(args, first_model: Path):
    """The input specs and one batch of feeds, from --input / --data / the model itself."""
    import numpy as np

    from edgekit.errors import EdgekitError
    from edgekit.model import inputs

    if args.input:
        specs = [inputs.parse_input_spec(text) for text in args.input]
    else:
        try:
            specs = inputs.specs_from_onnx(first_model)
        except EdgekitError:
            raise
        except Exception as exc:
            raise EdgekitError(
                f"onnxruntime cannot load {first_model}: {exc}. Check that the file is a complete, "
                "valid ONNX model."
            ) from None
    batch = specs[0].shape[0]
    if args.data is None:
        feeds = inputs.generate_samples(specs, count=batch)
        data = {"path": None, "samples": batch, "labels": False, "generated": True}
        return specs, feeds, data
    arrays, labels = inputs.load_npz(args.data)
    inputs.check_data_matches(specs, arrays, str(args.data))
    count = len(next(iter(arrays.values())))
    if count < batch:
        raise EdgekitError(
            f"The data file {args.data} has {count} samples; the batch needs {batch}."
        )
    feeds = {s.name: np.ascontiguousarray(arrays[s.name][:batch].astype(s.dtype)) for s in specs}
    data = {
        "path": str(args.data),
        "samples": count,
        "labels": labels is not None,
        "generated": False,
    }
    return specs, feeds, data


def _names(paths: list[Path]) -> list[str]:
    """Variant names from file stems, made unique (model, model-2, ...)."""
    names: list[str] = []
    for path in paths:
        name, n = path.stem, 2
        while name in names:
            name, n = f"{path.stem}-{n}", n + 1
        names.append(name)
    return names


def _file_field(path: Path, out_dir: Path) -> str:
    try:
        return os.path.relpath(path.resolve(), out_dir.resolve())
    except ValueError:  # another drive on Windows
        return str(path.resolve())


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from edgekit.bench import BenchOptions, measure
    from edgekit.fsutil import check_output_dir
    from edgekit.report import schema, terminal
    from edgekit.report.write import write_outputs

    check_times(args.min_time, args.max_time)
    check_output_dir(args.output)
    for path in args.models:
        _check_model(path)
    specs, feeds, data = _feeds(args, args.models[0])

    paths = dict(zip(_names(args.models), args.models, strict=True))
    options = BenchOptions(
        threads=args.threads,
        arena=args.arena == "on",
        min_time=args.min_time,
        max_time=args.max_time,
        profile=args.profile,
    )
    targets = parse_targets(args)
    if len(targets) > 1 or getattr(args, "targets", None):
        return _fleet(args, targets, paths, options, specs, feeds, data)
    target = targets[0] if targets else None
    err = Console(stderr=True)
    if args.quiet:
        result = measure(paths, feeds, options, target=target)
    else:
        with err.status("benchmarking") as status:
            result = measure(paths, feeds, options, progress=status.update, target=target)

    report = _report(result, paths, options, specs, data, args.output)
    write_outputs(report, args.output)

    if args.json:
        sys.stdout.write(schema.to_json(report))
    elif not args.quiet:
        console = terminal.stdout_console()
        terminal.show_report(report, console)
        for line in summary_lines(report):
            console.print(plain(line), highlight=False, markup=False)
        if target:
            console.print(
                f"measured on {plain(target.spec)}, over SSH", highlight=False, markup=False
            )
        console.print(f"[dim]report: {rich(args.output / 'report.json')}[/dim]")
    return _exit_code(report)


def _exit_code(report: dict) -> int:
    """1 when every model failed (each failure printed to stderr, where -q and --json still
    show it), else 0: a run that measured nothing is not a success."""
    rows = report["variants"]
    if any(not v.get("error") for v in rows):
        return 0
    for v in rows:
        print(f"edgekit: error: {plain(v['name'])} failed: {plain(v['error'])}", file=sys.stderr)
    print(
        f"edgekit: error: every model failed ({len(rows)} of {len(rows)}); nothing was measured. "
        "The report holds the errors.",
        file=sys.stderr,
    )
    return 1


def _fleet(args, targets, paths, options, specs, feeds, data) -> int:
    """Every device at once; OUT/<name>/report.json each, OUT/summary.json and summary.md."""
    import json

    from edgekit.bench import measure, remote
    from edgekit.report import schema, terminal
    from edgekit.report.write import write_fleet_summary, write_outputs

    if not targets:
        raise EdgekitError(f"The targets file {args.targets} lists no device.")

    def bench_one(target) -> dict:
        out = args.output / target.name
        result = measure(paths, feeds, options, target=target)
        report = _report(result, paths, options, specs, data, out)
        write_outputs(report, out)
        return report

    def fail_report(target, message: str) -> dict:
        rows = [schema.new_variant(name, error=message) for name in paths]
        report = schema.new_report(
            "bench",
            inputs=[s.to_json() for s in specs],
            data=data,
            device={"target": target.spec},
            variants=rows,
        )
        write_outputs(report, args.output / target.name)
        return report

    if not args.quiet:
        names = ", ".join(t.name for t in targets)
        print(f"benchmarking on {len(targets)} devices at once: {names}", file=sys.stderr)
    outcomes = remote.run_fleet(targets, bench_one, fail_report)
    result = remote.summary(outcomes)
    write_fleet_summary(result, args.output)
    if args.json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    elif not args.quiet:
        console = terminal.stdout_console()
        terminal.show_fleet(result, console)
        console.print(f"[dim]summary: {rich(args.output / 'summary.md')}[/dim]")
    for outcome in outcomes:
        if outcome.error:
            print(f"edgekit: error: {plain(outcome.error)}", file=sys.stderr)
    return 1 if result["failed"] else 0


def _report(result, paths, options, specs, data, out_dir: Path) -> dict:
    from edgekit.fsutil import sha256_file
    from edgekit.report import schema

    sweep = len(options.threads or []) > 1
    rows = []
    for key, v in result.variants.items():
        model = paths[key.rsplit("@", 1)[0] if sweep else key]
        row = schema.new_variant(
            key,
            file=_file_field(model, out_dir),
            size_bytes=v["size_bytes"],
            sha256=sha256_file(model),
            unmeasured={"accuracy": "edgekit bench has no reference outputs"},
        )
        schema.add_measurement(row, v)
        rows.append(row)
    return schema.new_report(
        "bench",
        inputs=[s.to_json() for s in specs],
        data=data,
        device=result.device,
        settings=result.settings,
        variants=rows,
        warnings=result.warnings,
    )


def summary_lines(report: dict) -> list[str]:
    """hyperfine-style lines: mean ± σ, range, interval of the median, and the speedup."""
    lines = []
    for v in report["variants"]:
        lat = v["latency_ms"]
        if not lat:
            continue
        ci = lat.get("median_ci95") or [None, None]
        ci_text = f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci[0] is not None else "n/a"
        std = lat["std"] if lat["std"] is not None else float("nan")
        line = (
            f"{v['name']}: median {lat['p50']:.4f} ms (95% CI {ci_text}), "
            f"mean {lat['mean']:.4f} ± {std:.4f} ms, range {lat['min']:.4f} … {lat['max']:.4f} ms, "
            f"{lat['n']} runs"
        )
        if v.get("gflops_per_s"):
            line += f", {v['gflops_per_s']:.1f} GFLOP/s"
        lines.append(line)
        rel = v.get("relative")
        if rel and rel.get("speedup"):
            s, rci = rel["speedup"], rel.get("ci95")
            word, factor = ("faster", s) if s >= 1 else ("slower", 1 / s)
            spread = ""
            if rci:
                lo, hi = (rci[0], rci[1]) if s >= 1 else (1 / rci[1], 1 / rci[0])
                spread = f" ± {(hi - lo) / 2:.2f}"
            verdict = "" if rel.get("significant") else " (not significant)"
            lines.append(f"  {factor:.2f}{spread} times {word} than {rel['baseline']}{verdict}")
        if v.get("profile") and v["profile"].get("ops"):
            top = ", ".join(
                f"{op['op_type']} {100 * op['share']:.0f}%" for op in v["profile"]["ops"][:4]
            )
            lines.append(f"  time by operator: {top}")
    return lines
