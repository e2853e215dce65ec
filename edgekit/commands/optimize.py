"""Export a trained PyTorch model to ONNX, simplify it, make int8 variants, benchmark every
variant on this CPU, measure accuracy drift against the float model (and task accuracy with
labelled --data), and write a report with the variant to ship.

Model formats, detected from the file's contents: TorchScript (torch.jit.save), torch.export
programs (.pt2), state_dicts (need --arch), pickled nn.Modules (need --trust-pickle), ONNX.

Example:
  edgekit optimize models/digits_cnn.pt --arch models/digits_cnn.py:DigitsCNN \\
      --data models/digits_test.npz
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

HELP = "make, measure and recommend deployable variants of a PyTorch model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="model file: .pt/.pth/.pt2/.onnx")
    parser.add_argument(
        "-o", "--output", type=Path, help="output folder (default: MODEL.edgekit beside the model)"
    )
    load = parser.add_argument_group("loading")
    load.add_argument(
        "--arch",
        metavar="MODULE:FACTORY",
        help="builds the model for a state_dict: `pkg.module:Net` or `path/to/file.py:Net`",
    )
    load.add_argument(
        "--code",
        metavar="PATH_OR_MODULE",
        action="append",
        default=[],
        help="import this first so a pickled model's class can be found (repeatable)",
    )
    load.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow unpickling a whole nn.Module (runs code from the file: only for files you trust)",
    )
    data = parser.add_argument_group("inputs and data")
    data.add_argument(
        "--input",
        metavar="NAME:SHAPE[:DTYPE[:LOW-HIGH]]",
        action="append",
        default=[],
        help="model input, e.g. image:1x3x224x224:float32 or ids:1x128:int64:0-30522 (repeatable)",
    )
    data.add_argument(
        "--data",
        type=Path,
        metavar="FILE.npz",
        help="real samples: arrays named after the inputs, optional `labels`",
    )
    decide = parser.add_argument_group("deciding")
    decide.add_argument(
        "--max-drift",
        metavar="BUDGET",
        help="cosine>=0.99, top1>=0.99 or accuracy-drop<=0.01 (default: by output kind)",
    )
    bench = parser.add_argument_group("benchmark")
    bench.add_argument(
        "--threads", metavar="N", type=int, help="intra-op threads (default: physical cores)"
    )
    bench.add_argument(
        "--min-time",
        type=float,
        default=2.0,
        metavar="S",
        help="seconds of timed runs per variant, at least (default 2)",
    )
    bench.add_argument(
        "--max-time",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds of timed runs per variant, at most (default 10)",
    )
    out = parser.add_argument_group("output")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress and no table")
    out.add_argument("--json", action="store_true", help="print only report.json to stdout")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from edgekit.api import OptimizeOptions, optimize
    from edgekit.errors import EdgekitError
    from edgekit.recommend import parse_budget
    from edgekit.report import render
    from edgekit.report.schema import to_json

    if not args.model.exists():
        raise EdgekitError(f"The model file {args.model} does not exist. Check the path.")
    if args.min_time <= 0 or args.max_time < args.min_time:
        raise EdgekitError("--min-time must be > 0 and --max-time at least --min-time.")
    options = OptimizeOptions(
        arch=args.arch,
        code=args.code,
        trust_pickle=args.trust_pickle,
        inputs=args.input,
        data=args.data,
        out_dir=args.output,
        budget=parse_budget(args.max_drift) if args.max_drift else None,
        threads=[args.threads] if args.threads else None,
        min_time=args.min_time,
        max_time=args.max_time,
    )
    quiet = args.quiet or args.json
    console = Console(stderr=True)

    @contextlib.contextmanager
    def step(message: str):
        if quiet:
            yield lambda text: None
            return
        with console.status(message) as status:
            yield lambda text: status.update(f"{message}: {text}")
        console.print(f"[green]✓[/green] {message}", highlight=False)

    report = optimize(args.model, options, step)
    if args.json:
        sys.stdout.write(to_json(report))
    elif not args.quiet:
        render.terminal(report, Console())
        out_dir = args.output or Path(report["source"]["path"]).parent
        console.print(f"[dim]report written to {options.out_dir or out_dir}[/dim]")
    return 0
