"""Export a trained PyTorch model to ONNX, simplify it, make int8 (and, asked for, pruned)
variants, benchmark every variant on this CPU, measure accuracy drift against the float model
(and task accuracy with labelled --data), and write a report with the variant to ship.

Model formats, detected from the file's contents: TorchScript (torch.jit.save), torch.export
programs (.pt2), state_dicts (need --arch), pickled nn.Modules (need --trust-pickle), ONNX.

Example:
  edgekit optimize models/digits_cnn.pt --arch models/digits_cnn.py:DigitsCNN \\
      --data models/digits_test.npz
  edgekit optimize models/digits_cnn.pt --arch models/digits_cnn.py:DigitsCNN \\
      --data models/digits_test.npz --prune structured:0.5 --finetune-epochs 3 \\
      --train-data models/digits_train.npz
  edgekit optimize model.onnx --target ssh://pi@raspberrypi.local   # timed on the Pi
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

from edgekit.commands.bench import (
    add_target_arguments,
    parse_targets,
    seconds,
    thread_count,
    whole_number,
)
from edgekit.passes.int8.opmix import CALIBRATION_METHODS, DEFAULT_CALIBRATION, MODES

HELP = "make, measure and recommend deployable variants of a PyTorch model"
MAX_EPOCHS = 10_000


def epochs(text: str) -> int:
    """--finetune-epochs N: a whole number from 0 to MAX_EPOCHS."""
    value = whole_number(text, "epochs")
    if not 0 <= value <= MAX_EPOCHS:
        raise argparse.ArgumentTypeError(f"{value} epochs: give 0 (no fine-tuning) to {MAX_EPOCHS}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        type=Path,
        help="model file (.pt/.pth/.pt2/.onnx), or a Hugging Face causal-LM folder "
        "(save_pretrained: config.json, *.safetensors, tokenizer.json)",
    )
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
        metavar="NAME:SHAPE[:DTYPE[:LOW-HIGH]] | NAME=VALUE",
        action="append",
        default=[],
        help="one forward() argument, in order (repeatable): image:1x3x224x224:float32, "
        "ids:1x128:int64:0-30522 (axis 0 is the batch; integers drawn from LOW to HIGH-1); "
        "sr:scalar:int64:16000 (one number, or LOW-HIGH with LOW=HIGH: that value in every "
        "sample); state:2xBx128 (B marks the batch axis); table:-4x8 (a leading -: no batch "
        "axis, the same tensor for every sample); gain:scalar (rank 0); sr=16000 (a non-tensor "
        "argument: int, float or true/false, baked into the export; for an ONNX model, the "
        "value fed to that input on every run). For an ONNX file, --input completes or "
        "overrides the shapes the file declares, by name, and must fit its ranks and dtypes",
    )
    data.add_argument(
        "--data",
        type=Path,
        metavar="FILE.npz|FILE.txt",
        help="real samples: arrays named after the inputs, optional `labels`; for a language "
        "model, held-out text (perplexity and KLD are measured on it; default: "
        "FOLDER-heldout.txt beside the folder, if there)",
    )
    prune = parser.add_argument_group(
        "pruning", "needs the nn.Module: a state_dict with --arch, or a pickled module"
    )
    prune.add_argument(
        "--prune",
        metavar="KIND:AMOUNT",
        action="append",
        default=[],
        help="unstructured:0.5 (zero half the weights: a smaller compressed file, no speedup) or "
        "structured:0.3 (remove 30%% of the channels: faster, needs fine-tuning) (repeatable); "
        "for a language model depth:N (drop the N layers that matter least)",
    )
    prune.add_argument(
        "--finetune-epochs",
        type=epochs,
        default=0,
        metavar="N",
        help="fine-tune each pruned model for N epochs on --train-data before export",
    )
    prune.add_argument(
        "--train-data",
        type=Path,
        metavar="FILE.npz",
        help="labelled samples to fine-tune on (arrays named after the inputs, plus `labels`); "
        "keep them apart from --data, on which accuracy is reported",
    )
    decide = parser.add_argument_group("deciding")
    decide.add_argument(
        "--primary-output",
        metavar="NAME",
        help="the output the budget, top-1 and the recommendation use when the model has several "
        "(default: the first; dict outputs are named by their keys, tuples output_0, output_1, ...)",
    )
    decide.add_argument(
        "--max-drift",
        metavar="BUDGET",
        help="cosine>=0.99, top1>=0.99 or accuracy-drop<=0.01 (default: by output kind); for a "
        "language model kld<=0.05,ppl-increase<=5%% (the default)",
    )
    int8 = parser.add_argument_group("int8")
    int8.add_argument(
        "--int8",
        choices=MODES,
        default="auto",
        help="int8 recipes to try: auto (by the model's op mix: static for Conv-heavy models, "
        "dynamic and static for MatMul/recurrent-heavy ones), dynamic (per-tensor and "
        "per-channel), static (QDQ, calibrated), all, or none (default auto)",
    )
    int8.add_argument(
        "--calibration",
        choices=tuple(CALIBRATION_METHODS),
        default=DEFAULT_CALIBRATION,
        help="how static int8 picks activation ranges from the calibration samples "
        "(default minmax: exact and fast; nodes it fits badly are kept in float)",
    )
    int8.add_argument(
        "--for-cpu",
        metavar="CPU",
        help="make int8 for this CPU instead of this machine's (default: the --target device's): "
        "rpi4 (Cortex-A72, no dot product), rpi5 (Cortex-A76, asimddp), x86-avx2, x86-vnni, or "
        "the report.json/device.json `edgekit bench` wrote on the device",
    )
    parser.add_argument(
        "--runtime",
        metavar="NAMES",
        help="runtimes to make and measure variants for, comma-separated: ort, openvino, litert, "
        "executorch (default: every one installed here; onnxruntime's are always made). LiteRT "
        "and ExecuTorch variants are converted from the PyTorch model, not from an ONNX file",
    )
    bench = parser.add_argument_group("benchmark")
    bench.add_argument(
        "--threads",
        metavar="N",
        type=thread_count,
        help="intra-op threads (default: physical cores)",
    )
    bench.add_argument(
        "--min-time",
        type=seconds,
        default=2.0,
        metavar="S",
        help="seconds of timed runs per variant, at least (default 2); a variant measurably slower "
        "than another within the drift budget stops sooner",
    )
    bench.add_argument(
        "--max-time",
        type=seconds,
        default=10.0,
        metavar="S",
        help="seconds of timed runs per variant, at most (default 10)",
    )
    add_target_arguments(parser, fleet=False)  # variants are made here, timed on the device
    out = parser.add_argument_group("output")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress and no table")
    out.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show how long each step took (also in report.json `timings`)",
    )
    out.add_argument("--json", action="store_true", help="print only report.json to stdout")


# The OptimizeOptions fields that take their flag's value as it is (same name).
_AS_GIVEN = (
    "arch", "code", "trust_pickle", "data", "min_time", "max_time", "int8", "calibration",
    "prune", "finetune_epochs", "train_data", "primary_output",
)  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from edgekit.api import OptimizeOptions, default_out_dir, optimize
    from edgekit.recommend import parse_budget

    if Path(args.model).is_dir():  # a causal-LM folder (read_lm_folder says what one holds)
        return run_lm(args)
    targets = parse_targets(args)
    from edgekit import cpus

    for_cpu = cpus.resolve(args.for_cpu) if args.for_cpu else None
    if targets:  # fail before minutes of exporting, not after
        from edgekit.benchmark.remote import probe

        probe(targets[0])
        for_cpu = for_cpu or cpus.from_target(targets[0])  # int8 is made for the device's CPU
    options = OptimizeOptions(
        **{name: getattr(args, name) for name in _AS_GIVEN},
        inputs=args.input,
        out_dir=args.output,
        runtimes=args.runtime,
        budget=parse_budget(args.max_drift) if args.max_drift else None,
        threads=None if args.threads is None else [args.threads],
        target=targets[0] if targets else None,
        for_cpu=for_cpu,
        debug=bool(getattr(args, "debug", False)),
    )
    report = optimize(args.model, options, _progress(args))
    _show(args, report, args.output or default_out_dir(args.model))
    return 0


def _progress(args: argparse.Namespace):
    """The `step` context the pipelines report progress through: a spinner, then a tick."""
    from rich.console import Console

    from edgekit.textsafe import rich

    console = Console(stderr=True)

    @contextlib.contextmanager
    def step(message: str):
        if args.quiet or args.json:
            yield lambda text: None
            return
        start = time.perf_counter()
        with console.status(message) as status:
            yield lambda text: status.update(f"{message}: {text}")
        took = f" [dim]({time.perf_counter() - start:.1f} s)[/dim]" if args.verbose else ""
        console.print(f"[green]✓[/green] {rich(message)}{took}", highlight=False)

    return step


def _show(args: argparse.Namespace, report, out_dir: Path) -> None:
    from rich.console import Console

    from edgekit.report import terminal
    from edgekit.textsafe import rich

    if args.json:
        sys.stdout.write(report.text())
    elif not args.quiet:
        terminal.show_report(report.to_json())
        if args.verbose:
            terminal.show_timings(report.to_json())
        Console(stderr=True).print(f"[dim]report written to {rich(out_dir)}/[/dim]")


# Options of tensor models that mean nothing for a language model: refused, not ignored.
_NOT_FOR_LM = {
    "arch": "--arch",
    "code": "--code",
    "trust_pickle": "--trust-pickle",
    "input": "--input",
    "train_data": "--train-data",
    "primary_output": "--primary-output",
    "for_cpu": "--for-cpu",
    "runtime": "--runtime",
}


def run_lm(args: argparse.Namespace) -> int:
    """`edgekit optimize FOLDER` on a Hugging Face causal-LM folder (edgekit.lm.pipeline)."""
    from rich.console import Console

    from edgekit.api import default_out_dir
    from edgekit.errors import EdgekitError
    from edgekit.lm.folder import read_lm_folder
    from edgekit.lm.pipeline import LMOptions, optimize_lm
    from edgekit.recommend import parse_lm_budget
    from edgekit.textsafe import rich

    given = [flag for key, flag in _NOT_FOR_LM.items() if getattr(args, key, None)]
    if parse_targets(args):
        given.append("--target")
    if args.finetune_epochs:
        given.append("--finetune-epochs")
    if given:
        raise EdgekitError(
            f"{args.model} is a folder, which edgekit reads as a causal language model; "
            f"{', '.join(given)} apply to PyTorch and ONNX model files only. Leave them out "
            "(an LM takes --data FILE.txt, --max-drift, --threads, --min-time, --max-time)."
        )
    depth = 0
    for spec in args.prune:
        kind, _, amount = spec.partition(":")
        if kind.strip() != "depth" or not amount.strip().isdigit() or depth:
            raise EdgekitError(
                f"--prune {spec}: a language model is pruned in depth only, once: --prune "
                "depth:N drops the N decoder layers whose removal raises perplexity on the "
                "held-out text least (variants depth-N and depth-N-int4)."
            )
        depth = int(amount)
    lm = read_lm_folder(args.model)
    if not (args.quiet or args.json):
        size = f"{lm.parameters:,} parameters" if lm.parameters else "parameters unknown"
        Console(stderr=True).print(
            f"causal LM detected: {rich(lm.architecture)}, {size}", highlight=False
        )
    options = LMOptions(
        data=args.data,
        budget=parse_lm_budget(args.max_drift) if args.max_drift else None,
        threads=args.threads,
        prune_depth=depth,
        min_time=args.min_time,
        max_time=args.max_time,
    )
    out_dir = args.output or default_out_dir(args.model)
    report = optimize_lm(args.model, out_dir, options, _progress(args))
    _show(args, report, out_dir)
    return 0
