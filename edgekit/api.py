"""What the CLI and Python users call: `optimize()`, `bench()`, `bench_fleet()` (and
`edgekit.report.compare.compare_reports`, torch- and benchmark-free). optimize and bench return the
`Report` written as report.json (`.to_json()` is its dict); bench_fleet the dict summary.json
holds. The commands only parse arguments, call these, and print.

optimize: model file ─load─▶ LoadedModel + Samples ─export─▶ fp32 ─passes (PIPELINE)─▶ variants
  ─accuracy vs the float model─▶ drift ─bench (worker processes, interleaved)─▶ latency, memory
  ─recommend─▶ report
bench: ONNX files ─bench─▶ report (torch-free: runs on the device)
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from edgekit import runtimes
from edgekit.accuracy import (
    check_finite_reference,
    check_labels,
    drift_by_output,
    kind_note,
    output_kinds,
    run_onnx,
)
from edgekit.benchmark import BenchOptions, BenchResult, measure
from edgekit.cpus import made_for, report_section
from edgekit.errors import EdgekitError
from edgekit.fsutil import output_folder, sha256_file
from edgekit.model.samples import Samples, resolve_samples
from edgekit.onnxfile import copy_onnx, files_on_disk, size_on_disk
from edgekit.passes import PassContext, Variant
from edgekit.recommend import Budget, default_budget, recommend
from edgekit.report.schema import Report, build_report
from edgekit.report.schema import Variant as Row
from edgekit.report.write import write_fleet_summary, write_outputs

if TYPE_CHECKING:
    import logging

    from edgekit.benchmark.remote import Target

GENERATED_SAMPLES = 32  # random inputs for drift when no --data is given


@dataclass
class OptimizeOptions:
    arch: str | None = None
    code: Sequence[str] = ()
    trust_pickle: bool = False
    inputs: Sequence[str] = ()  # --input specs as text
    data: Path | None = None
    out_dir: Path | None = None  # default: <model>.edgekit beside the model
    budget: Budget | None = None  # default: by output kind
    int8: str = "auto"  # auto|dynamic|static|all|none: which int8 recipes to try
    calibration: str = "minmax"  # static int8: minmax|entropy|percentile
    threads: list[int] | None = None
    min_time: float = 2.0
    max_time: float = 10.0
    target: Target | None = None  # benchmark on this device over SSH (edgekit.benchmark.remote)
    prune: Sequence[str] = ()  # "unstructured:0.5", "structured:0.3"
    finetune_epochs: int = 0  # fine-tune pruned models on train_data before export
    train_data: Path | None = None  # labelled .npz kept apart from `data`
    for_cpu: str | dict | None = None  # make int8 for: rpi4|rpi5|x86-avx2|x86-vnni|device.json
    primary_output: str | None = None  # the output the budget and top-1 use (default: the first)
    runtimes: str | None = None  # --runtime ort,openvino,litert,executorch (None: all installed)
    debug: bool = False  # let torch's, onnx's and onnxruntime's own logs through to the terminal

    def __post_init__(self) -> None:
        self.bench_options()  # bad timing options fail before minutes of work, not after

    def bench_options(self) -> BenchOptions:
        return BenchOptions(threads=self.threads, min_time=self.min_time, max_time=self.max_time)


@contextlib.contextmanager
def no_progress(message: str) -> Iterator[Callable[[str], None]]:
    """The default `step`: `with step("what") as update:` where update(text) reports progress."""
    yield lambda text: None


def default_out_dir(model_path: Path) -> Path:
    return model_path.with_name(model_path.name.split(".")[0] + ".edgekit")


def timed_steps(step, timings: list[dict]):
    """`step`, recording each step's wall time in `timings` as {"step", "seconds"}: the report's
    `timings` (where the time of a run goes)."""
    import time

    @contextlib.contextmanager
    def timed(message: str):
        start = time.perf_counter()
        try:
            with step(message) as update:
                yield update
        finally:
            timings.append({"step": message, "seconds": round(time.perf_counter() - start, 3)})

    return timed


def optimize(model_path: Path, options: OptimizeOptions, step=no_progress) -> Report:
    """Run the whole pipeline; returns the report (also written to the output folder).
    Bad input raises EdgekitError before anything is written; a failing pass or benchmark
    becomes an error row. Earlier outputs in the folder are replaced only at the very end, all
    at once (edgekit.fsutil.output_folder)."""
    from edgekit.model.formats import check_model_file

    model_path = Path(model_path)
    check_model_file(model_path)  # before an output folder is made beside it
    out_dir = Path(options.out_dir or default_out_dir(model_path))
    # The folder is locked and checked before minutes of work; it changes only at the very end.
    with (
        output_folder(out_dir, inputs=_input_files(model_path, options)) as staging,
        _dependency_logs(options.debug) as kept,
    ):
        report = _optimize(model_path, options, staging, step, kept)
    return report


_DEPENDENCY_LOGGERS = ("torch", "onnx", "onnxruntime", "onnxscript", "onnx_ir", "onnxsim")


@contextlib.contextmanager
def _dependency_logs(debug: bool) -> Iterator[list[logging.LogRecord]]:
    """Keep the dependencies' chatter off the terminal: onnxruntime's own logger to errors only
    (its `CleanUnusedInitializersAndNodeArgs` warnings), Python warnings held back, and the
    warning records of torch, onnx, onnxruntime and onnxscript collected into the list yielded
    (the report's notes summarise them). With `debug`, all of it goes to the terminal as the
    libraries print it."""
    import logging
    import warnings

    import onnxruntime as ort

    from edgekit.logcapture import logs_captured

    if debug:
        yield []
        return
    loggers = [logging.getLogger(name) for name in _DEPENDENCY_LOGGERS]
    ort.set_default_logger_severity(3)
    try:
        with logs_captured(loggers, logging.WARNING) as kept, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield kept
    finally:
        ort.set_default_logger_severity(2)


def _dependency_note(kept: list[logging.LogRecord]) -> list[str]:
    if not kept:
        return []
    lines = [f"{record.name}: {record.getMessage()}" for record in kept]
    distinct = list(dict.fromkeys(one.splitlines()[0][:200] for one in lines if one.strip()))
    shown = "; ".join(distinct[:3])
    more = f" (and {len(distinct) - 3} more kinds)" if len(distinct) > 3 else ""
    return [
        f"torch, onnx and onnxruntime gave {len(kept)} warning(s), kept off the terminal "
        f"(`edgekit --debug optimize` shows them): {shown}{more}"
    ]


def _optimize(
    model_path: Path, options: OptimizeOptions, staging: Path, step, kept: list[logging.LogRecord]
) -> Report:
    """The pipeline, writing every output into `staging`."""
    import time

    from edgekit.model.export import check_parity, export_onnx, torch_outputs
    from edgekit.model.load import load_model
    from edgekit.passes import pipeline

    started = time.perf_counter()
    steps: list[dict] = []
    step = timed_steps(step, steps)

    with step("loading the model"):
        loaded = load_model(
            model_path, arch=options.arch, code=options.code, trust_pickle=options.trust_pickle
        )
    samples = resolve_samples(options.inputs, loaded.input_specs, options.data, GENERATED_SAMPLES)
    specs, feeds, labels = samples.specs, samples.feeds, samples.labels
    loaded.constants = samples.constants
    state_note = None
    if loaded.state:  # a TorchScript model that writes attributes: torch is loaded already
        from edgekit.model.state import make_state_explicit

        state_note = make_state_explicit(loaded, specs)
    options = dataclasses.replace(options, for_cpu=made_for(options))  # once, before the passes
    # bad options fail here, before any work
    passes = [p.check(options, specs, feeds) for p in pipeline.pass_classes()]

    batch = samples.batch  # drift is measured at the batch the model is timed at
    fp32 = Variant("fp32", staging / "fp32.onnx")
    if loaded.format == "onnx":
        copy_onnx(loaded.files, fp32.path)
        samples = samples.fitted_to(fp32.path)  # integer inputs as the graph reads them
        feeds = samples.feeds
        fp32.passes.append({"name": "load-onnx", "settings": {}})
        fp32.notes.append("the source is ONNX: drift is measured against it")
        reference = fp32_outputs = run_onnx(fp32.path, feeds, chunk=batch, specs=specs)
        output_names = [
            o.name for o in onnx.load(str(fp32.path), load_external_data=False).graph.output
        ]
    else:
        with step("exporting to ONNX"):
            export = export_onnx(loaded, specs, fp32.path)
            samples = samples.fitted_to(fp32.path)  # integer inputs as the graph reads them
            feeds = samples.feeds
            # torch and onnxruntime on the same batches: a model may couple its samples
            parity = check_parity(loaded, fp32.path, feeds, specs)
        fp32.passes.append({"name": "export", "settings": export})
        fp32.notes.append(
            f"export parity vs torch: max |err| {parity['max_abs_err']:.2e}, "
            f"mean {parity['mean_abs_err']:.2e} ({export['exporter']} exporter, "
            f"opset {export['opset']})"
        )
        fp32.notes += export.get("notes", [])
        if state_note:
            fp32.notes.append(state_note)
        with step("running the torch model for reference outputs"):
            reference = torch_outputs(loaded, feeds, specs)
        output_names = export["output_names"]
        fp32_outputs = None
    primary = _primary_output(options.primary_output, output_names)
    primary_ref = [reference[output_names.index(primary)]]
    check_labels(labels, primary_ref, options.data)
    check_finite_reference(reference, output_names, primary, options.data)

    kinds = output_kinds(reference, output_names, primary, fp32.path, labels is not None)
    classifier = kinds[primary]["kind"] == "classifier"
    budget = options.budget or default_budget(classifier, labels is not None)
    ctx = PassContext(
        staging=staging,
        feeds=feeds,
        labels=labels,
        reference=reference,
        data_is_real=samples.data is not None,
        budget=budget,
        step=step,
        batch=batch,
        loaded=loaded,
        specs=specs,
        output_kinds=kinds,
        cpu=options.for_cpu,
    )
    if fp32_outputs is not None:  # an ONNX source's reference is fp32's outputs: run once
        ctx.keep_outputs(fp32.path, fp32_outputs)
    variants = pipeline.run(passes, fp32, ctx)

    with step("measuring accuracy"):
        rows = [_variant_row(v, ctx, output_names, primary) for v in variants]
    measured = [v for v in variants if v.error is None]
    with step("benchmarking " + ", ".join(v.name for v in measured)) as update:
        bench_result = measure(
            {v.name: v.path for v in measured},
            samples.first_batch(),
            options.bench_options(),
            progress=update,
            target=options.target,
            batch=samples.batch,
            candidates=_within_budget(rows, budget),
        )
    made_for_section, made_for_warnings = report_section(options.for_cpu, bench_result.device)
    report = build_report(
        "optimize",
        rows,
        bench_result,
        source={"path": str(model_path), "format": loaded.format, "sha256": loaded.sha256},
        inputs=_inputs_json(samples, variants),
        data={**samples.to_json(), "drift_batch": batch},
        budget=str(budget),
        notes=_output_notes(output_names, primary, options.primary_output)
        + [kind_note(kinds, primary)]
        + samples.generated_note()
        + ctx.notes
        + _dependency_note(kept),
        warnings=made_for_warnings,
        extra={"made_for": made_for_section},
    )
    report.recommendation = recommend([v.to_json() for v in report.variants], "fp32", budget)
    report.extra["timings"] = _timings(steps, time.perf_counter() - started)
    _keep_only(staging, [f for v in measured for f in files_on_disk(v.path)])
    write_outputs(report, staging)
    return report


def _within_budget(rows: list[Row], budget: Budget) -> set[str]:
    """The variants the recommendation may pick by their drift (measured before the benchmark):
    the others are timed briefly (edgekit.benchmark.runner.run)."""
    base = next((r.accuracy for r in rows if r.name == "fp32"), None)
    return {r.name for r in rows if not r.error and budget.check(r.accuracy, base)[0]}


def _timings(steps: list[dict], total: float) -> dict:
    """Where the run's wall time went: each step, and the rest (reading the data, checks)."""
    return {
        "total_s": round(total, 3),
        "steps": steps,
        "other_s": round(max(0.0, total - sum(s["seconds"] for s in steps)), 3),
    }


def _inputs_json(samples: Samples, variants: list[Variant]) -> list[dict]:
    """The inputs of the report; where static int8 was calibrated, the range each input was
    calibrated on (served inputs outside it are the ones int8 clips: `edgekit serve` counts them)."""
    inputs = [s.to_json() for s in samples.specs]
    constants = [c.to_json() for c in samples.constants]
    settings = [p["settings"] for v in variants for p in v.passes if p["name"] == "quantize-static"]
    if not settings:
        return inputs + constants
    count = settings[0]["calibration_samples"]
    for entry, spec in zip(inputs, samples.specs, strict=True):
        values = samples.feeds[spec.name][:count]
        if np.issubdtype(values.dtype, np.number) and values.size:
            entry["calibration"] = {
                "min": float(values.min()),
                "max": float(values.max()),
                "samples": count,
                "source": "--data" if samples.data else "generated",
            }
    return inputs + constants


def _input_files(model_path: Path, options: OptimizeOptions) -> list[Path]:
    """Files this run reads: the output folder must not hold them (publishing replaces it)."""
    files = [model_path, options.data, options.train_data]
    files += [Path(c) for c in options.code if c.endswith(".py")]
    if options.arch and ".py:" in options.arch:
        files.append(Path(options.arch.rpartition(":")[0]))
    return [Path(f) for f in files if f]


def _keep_only(folder: Path, files: list[Path]) -> None:
    """Leave in `folder` only the files of the report (a failed pass may have left others)."""
    keep = {f.resolve() for f in files}
    for path in folder.iterdir():
        if path.resolve() not in keep:
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def _primary_output(chosen: str | None, names: list[str]) -> str:
    if chosen is None:
        return names[0]
    if chosen not in names:
        raise EdgekitError(
            f"--primary-output {chosen!r} is not an output of the model; its outputs are "
            f"{names}. Name one of them (dict outputs are named by their keys, tuple outputs "
            "output_0, output_1, ...)."
        )
    return chosen


def _output_notes(names: list[str], primary: str, chosen: str | None) -> list[str]:
    if len(names) == 1:
        return []
    how = (
        "named by --primary-output" if chosen else "the first; --primary-output NAME picks another"
    )
    return [
        f"the model has {len(names)} outputs ({', '.join(names)}); the budget, top-1 and the "
        f"recommendation use {primary!r} ({how}); every output's drift is in accuracy.outputs"
    ]


def _variant_row(v: Variant, ctx: PassContext, names: list[str], primary: str) -> Row:
    row = Row(
        v.name, parent=v.parent, passes=v.passes, notes=list(v.notes), error=v.error, **v.extra
    )
    row.runtime = v.runtime
    if v.error:
        return row
    row.file, row.size_bytes, row.sha256 = v.path.name, size_on_disk(v.path), sha256_file(v.path)
    try:
        accuracy, unmeasured = drift_by_output(
            ctx.reference, ctx.outputs(v.path), ctx.labels, names, primary, ctx.output_kinds
        )
    except Exception as exc:  # onnxruntime refuses the model: a row with the reason
        row.error = f"{v.runtime} could not run this variant: {exc}"
        return row
    row.accuracy = accuracy
    row.unmeasured.update(unmeasured)
    return row


# ---------------------------------------------------------------------------- bench


def bench(
    models: Sequence[Path],
    options: BenchOptions | None = None,
    *,
    inputs: Sequence[str] = (),
    data: Path | None = None,
    out_dir: Path | None = None,
    target: Target | None = None,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Time ONNX models on this CPU (or on `target` over SSH); the first is the baseline.
    Returns the report, also written to `out_dir` when given (published whole). Torch-free."""
    options = options or BenchOptions()
    with _bench_output(out_dir, models) as staging:
        paths, samples = _bench_inputs(models, inputs, data)
        result = measure(
            paths,
            samples.first_batch(),
            options,
            progress=progress,
            target=target,
            batch=samples.batch,
        )
        report = _bench_report(result, paths, options, samples, out_dir)
        if staging:
            write_outputs(report, staging)
    return report


def bench_fleet(
    models: Sequence[Path],
    targets: Sequence[Target],
    options: BenchOptions | None = None,
    *,
    inputs: Sequence[str] = (),
    data: Path | None = None,
    out_dir: Path,
) -> dict:
    """Time the models on every device at once: OUT/<device>/report.* each, and a summary
    (returned, and written as OUT/summary.json and summary.md) comparing them. A device that
    fails gets an error report; `summary["failed"]` counts them."""
    from edgekit.benchmark import remote
    from edgekit.report.fleet import fleet_summary

    if not targets:
        raise EdgekitError("The fleet lists no device: give --target or a --targets file.")
    options = options or BenchOptions()
    with output_folder(out_dir, inputs=models) as staging:
        paths, samples = _bench_inputs(models, inputs, data)

        def bench_one(target) -> Report:
            result = measure(
                paths, samples.first_batch(), options, target=target, batch=samples.batch
            )
            report = _bench_report(result, paths, options, samples, Path(out_dir) / target.name)
            write_outputs(report, staging / target.name)
            return report

        def fail_report(target, message: str) -> Report:
            report = build_report(
                "bench",
                [Row(name, error=message) for name in paths],
                inputs=[s.to_json() for s in samples.specs],
                data=samples.to_json(),
                device={"target": target.spec},
            )
            write_outputs(report, staging / target.name)
            return report

        summary = fleet_summary(remote.run_fleet(list(targets), bench_one, fail_report))
        write_fleet_summary(summary, staging)
    return summary


@contextlib.contextmanager
def _bench_output(out_dir: Path | None, models: Sequence[Path]) -> Iterator[Path | None]:
    if out_dir is None:
        yield None
        return
    with output_folder(out_dir, inputs=models) as staging:
        yield staging


def _bench_inputs(models, inputs, data) -> tuple[dict[str, Path], Samples]:
    """Checked ONNX files by variant name, and one batch of samples from --input / --data / the
    first model's own shapes."""
    from edgekit.model.formats import check_model_file
    from edgekit.model.inputs import InputSpec
    from edgekit.model.load import load_onnx

    models = [Path(m) for m in models]
    onnx = [runtimes.runtime_for(m) == "onnxruntime" for m in models]
    if onnx[0]:
        specs = load_onnx(models[0]).input_specs
    else:  # another runtime's artifact (.xml, .tflite, .pte): that runtime says what it takes
        check_model_file(models[0])
        taken = runtimes.describe(models[0])[0]
        specs = [InputSpec(t.name, tuple(d or 1 for d in t.shape), t.dtype) for t in taken]
    for model, is_onnx in zip(models[1:], onnx[1:], strict=True):
        load_onnx(model, read_inputs=False) if is_onnx else check_model_file(model)
    samples = resolve_samples(inputs, specs, data, generated=1)
    if onnx[0]:
        samples = samples.fitted_to(models[0])  # integer inputs as the graph reads them
    return dict(zip(_unique_names(models), models, strict=True)), samples


def _unique_names(paths: list[Path]) -> list[str]:
    """Variant names from file stems, made unique (model, model-2, ...)."""
    names: list[str] = []
    for path in paths:
        name, n = path.stem, 2
        while name in names:
            name, n = f"{path.stem}-{n}", n + 1
        names.append(name)
    return names


def _bench_report(
    result: BenchResult, paths: dict[str, Path], options: BenchOptions, samples: Samples, out_dir
) -> Report:
    sweep = len(options.threads or []) > 1
    rows = []
    for key in result.variants:
        model = paths[key.rsplit("@", 1)[0] if sweep else key]
        rows.append(
            Row(
                key,
                runtime=runtimes.runtime_for(model),
                file=_relative_to(model, out_dir),
                sha256=sha256_file(model),
                unmeasured={"accuracy": "edgekit bench has no reference outputs"},
            )
        )
    return build_report(
        "bench",
        rows,
        result,
        inputs=[s.to_json() for s in samples.specs],
        data=samples.to_json(),
    )


def _relative_to(path: Path, folder: Path | None) -> str:
    """The model's path as seen from the report's folder (where report.json will be)."""
    if folder is None:
        return str(path.resolve())
    try:
        return os.path.relpath(path.resolve(), Path(folder).resolve())
    except ValueError:  # another drive on Windows
        return str(path.resolve())
