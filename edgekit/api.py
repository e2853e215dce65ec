"""`optimize()`: what the CLI and Python users call to turn a model file into a measured report.

model file ─load─▶ LoadedModel + InputSpecs ─export─▶ fp32 ─simplify · quantize─▶ variants
  ─accuracy vs the float model─▶ drift ─bench (worker processes, interleaved)─▶ latency, memory
  ─recommend─▶ report
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from edgekit.accuracy import drift, is_classifier_output, run_onnx
from edgekit.bench.flops import files_on_disk
from edgekit.cpus import made_for, report_section
from edgekit.errors import EdgekitError
from edgekit.fsutil import output_folder, sha256_file
from edgekit.model.inputs import (
    InputSpec,
    check_data_matches,
    generate_samples,
    load_npz,
    parse_input_spec,
    specs_from_data,
)
from edgekit.passes import PARITY_SAMPLES, PassContext, Variant
from edgekit.recommend import Budget, default_budget, recommend
from edgekit.report.schema import add_measurement, new_report, new_variant, write_outputs

if TYPE_CHECKING:
    from edgekit.bench.remote import Target

GENERATED_SAMPLES = 32  # random inputs for drift when no --data is given
EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf's limit is 2 GiB: larger models keep a .data file


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
    target: Target | None = None  # benchmark on this device over SSH (edgekit.bench.remote)
    prune: Sequence[str] = ()  # "unstructured:0.5", "structured:0.3"
    finetune_epochs: int = 0  # fine-tune pruned models on train_data before export
    train_data: Path | None = None  # labelled .npz kept apart from `data`
    for_cpu: str | dict | None = None  # make int8 for: rpi4|rpi5|x86-avx2|x86-vnni|device.json


@contextlib.contextmanager
def no_progress(message: str) -> Iterator[Callable[[str], None]]:
    """The default `step`: `with step("what") as update:` where update(text) reports progress."""
    yield lambda text: None


def default_out_dir(model_path: Path) -> Path:
    return model_path.with_name(model_path.name.split(".")[0] + ".edgekit")


def optimize(model_path: Path, options: OptimizeOptions, step=no_progress) -> dict:
    """Run the whole pipeline; returns the report (also written to the output folder).
    Bad input raises EdgekitError before anything is written; a failing pass or benchmark
    becomes an error row. Earlier outputs in the folder are replaced only at the very end, all
    at once (edgekit.fsutil.output_folder)."""
    model_path = Path(model_path)
    out_dir = Path(options.out_dir or default_out_dir(model_path))
    # The folder is locked and checked before minutes of work; it changes only at the very end.
    with output_folder(out_dir, inputs=_input_files(model_path, options)) as staging:
        report = _optimize(model_path, options, staging, step)
    return report


def _optimize(model_path: Path, options: OptimizeOptions, staging: Path, step) -> dict:
    """The pipeline, writing every output into `staging`."""
    from edgekit.model.export import check_parity, export_onnx, torch_outputs
    from edgekit.model.load import load_model
    from edgekit.passes.pipeline import PIPELINE

    with step("loading the model"):
        loaded = load_model(
            model_path, arch=options.arch, code=options.code, trust_pickle=options.trust_pickle
        )
    arrays, labels = load_npz(options.data) if options.data else (None, None)
    specs = _input_specs(options.inputs, loaded.input_specs, arrays)
    if arrays is not None:
        check_data_matches(specs, arrays, str(options.data))
        feeds = {s.name: arrays[s.name] for s in specs}
    else:
        feeds = generate_samples(specs, GENERATED_SAMPLES)
    options = dataclasses.replace(options, for_cpu=made_for(options))  # once, before the passes
    settings = [p.check(options, specs, feeds) for p in PIPELINE]  # bad options fail here

    batch = specs[0].shape[0]  # drift is measured at the batch the model is timed at
    fp32 = Variant("fp32", staging / "fp32.onnx")
    if loaded.format == "onnx":
        _copy_onnx(loaded.path, fp32.path)
        fp32.passes.append({"name": "load-onnx", "settings": {}})
        fp32.notes.append("the source is ONNX: drift is measured against it")
        reference = run_onnx(fp32.path, feeds, chunk=batch)
    else:
        with step("exporting to ONNX"):
            export = export_onnx(loaded, specs, fp32.path)
            parity_feeds = {k: v[:PARITY_SAMPLES] for k, v in feeds.items()}
            parity = check_parity(loaded, fp32.path, parity_feeds)
        fp32.passes.append({"name": "export", "settings": export})
        fp32.notes.append(
            f"export parity vs torch: max |err| {parity['max_abs_err']:.2e}, "
            f"mean {parity['mean_abs_err']:.2e} ({export['exporter']} exporter, "
            f"opset {export['opset']})"
        )
        fp32.notes += export.get("notes", [])
        with step("running the torch model for reference outputs"):
            reference = torch_outputs(loaded, feeds)

    budget = options.budget or default_budget(is_classifier_output(reference), labels is not None)
    ctx = PassContext(
        staging=staging,
        feeds=feeds,
        labels=labels,
        reference=reference,
        data_is_real=arrays is not None,
        budget=budget,
        step=step,
        batch=batch,
        options=options,
        loaded=loaded,
        specs=specs,
    )
    variants = [fp32]
    for one_pass, checked in zip(PIPELINE, settings, strict=True):
        variants += one_pass.run(variants, ctx, checked)

    with step("measuring accuracy"):
        rows = {v.name: _variant_row(v, ctx) for v in variants}
    measured = [v for v in variants if v.error is None]
    bench_result = _bench(measured, feeds, specs, options, step)
    for name, measured_row in bench_result.variants.items():
        add_measurement(rows[name], measured_row)

    variant_rows = list(rows.values())
    made_for_section, made_for_warnings = report_section(options.for_cpu, bench_result.device)
    report = new_report(
        "optimize",
        source={"path": str(model_path), "format": loaded.format, "sha256": loaded.sha256},
        inputs=_inputs_json(specs, variants, feeds, arrays is not None),
        data={
            "path": str(options.data) if options.data else None,
            "samples": len(next(iter(feeds.values()))),
            "labels": labels is not None,
            "generated": arrays is None,
            "drift_batch": batch,
        },
        device=bench_result.device,
        settings=bench_result.settings,
        variants=variant_rows,
        budget=str(budget),
        notes=ctx.notes,
        recommendation=recommend(variant_rows, "fp32", budget),
        warnings=list(bench_result.warnings) + made_for_warnings,
        made_for=made_for_section,
    )
    _keep_only(staging, [f for v in measured for f in files_on_disk(v.path)])
    write_outputs(report, staging)
    return report


def _inputs_json(specs, variants: list[Variant], feeds, real: bool) -> list[dict]:
    """The inputs of the report; where static int8 was calibrated, the range each input was
    calibrated on (served inputs outside it are the ones int8 clips: `edgekit serve` counts them)."""
    inputs = [s.to_json() for s in specs]
    settings = [p["settings"] for v in variants for p in v.passes if p["name"] == "quantize-static"]
    if not settings:
        return inputs
    samples = settings[0]["calibration_samples"]
    for entry, spec in zip(inputs, specs, strict=True):
        values = feeds[spec.name][:samples]
        if np.issubdtype(values.dtype, np.number) and values.size:
            entry["calibration"] = {
                "min": float(values.min()),
                "max": float(values.max()),
                "samples": samples,
                "source": "--data" if real else "generated",
            }
    return inputs


def _input_files(model_path: Path, options: OptimizeOptions) -> list[Path]:
    """Files this run reads: the output folder must not hold them (publishing replaces it)."""
    files = [model_path, options.data, options.train_data]
    files += [Path(c) for c in options.code if c.endswith(".py")]
    if options.arch and ".py:" in options.arch:
        files.append(Path(options.arch.rpartition(":")[0]))
    return [Path(f) for f in files if f]


def _copy_onnx(source: Path, dest: Path) -> None:
    """The source model as `dest`, with its external data (if any) as `dest`.data."""
    files = files_on_disk(source)
    if len(files) == 1:
        shutil.copyfile(source, dest)
        return
    folder = source.resolve().parent
    outside = [f for f in files if folder not in f.resolve().parents]
    if outside:
        raise EdgekitError(
            f"{source} points to external data outside its folder ({outside[0]}); edgekit reads "
            "external data only from the model's own folder. Move the data file next to it."
        )
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise EdgekitError(
            f"{source} keeps its weights in external data files that are missing ({missing}). "
            "Copy them next to the model file, under the names the model refers to."
        )
    model = onnx.load(str(source))  # with the external data
    big = sum(f.stat().st_size for f in files) > EXTERNAL_DATA_BYTES
    onnx.save_model(model, str(dest), save_as_external_data=big, location=f"{dest.name}.data")


def _keep_only(folder: Path, files: list[Path]) -> None:
    """Leave in `folder` only the files of the report (a failed pass may have left others)."""
    keep = {f.resolve() for f in files}
    for path in folder.iterdir():
        if path.resolve() not in keep:
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def _input_specs(
    texts: Sequence[str], from_file: list[InputSpec] | None, arrays: dict | None
) -> list[InputSpec]:
    """--input wins; then shapes the file carries; then the shapes of the --data arrays."""
    if texts:
        return [parse_input_spec(t) for t in texts]
    if from_file:
        return from_file
    if arrays is not None:
        return specs_from_data(arrays)
    raise EdgekitError(
        "This model file does not say what input it takes. Give its shape with "
        "`--input NAME:1x3x224x224:float32` (repeat for several inputs), or pass real samples "
        "with `--data FILE.npz` (arrays named after the inputs)."
    )


def _variant_row(v: Variant, ctx: PassContext) -> dict:
    row = new_variant(v.name, parent=v.parent, passes=v.passes, notes=list(v.notes), error=v.error)
    row.update(v.extra)
    if v.error:
        return row
    row.update(file=v.path.name, size_bytes=v.path.stat().st_size, sha256=sha256_file(v.path))
    try:
        accuracy, unmeasured = drift(ctx.reference, ctx.outputs(v.path), ctx.labels)
    except Exception as exc:  # onnxruntime refuses the model: a row with the reason
        row["error"] = f"onnxruntime could not run this variant: {exc}"
        return row
    row["accuracy"] = accuracy
    row["unmeasured"].update(unmeasured)
    return row


def _bench(variants: list[Variant], feeds, specs: list[InputSpec], options, step):
    from edgekit.bench import BenchOptions, measure

    batch = {s.name: feeds[s.name][: s.shape[0]] for s in specs}
    bench_options = BenchOptions(
        threads=options.threads, min_time=options.min_time, max_time=options.max_time
    )
    with step("benchmarking " + ", ".join(v.name for v in variants)) as update:
        models = {v.name: v.path for v in variants}
        return measure(models, batch, bench_options, progress=update, target=options.target)
