"""Pruning, reported for what it really gives.

Unstructured (global L1 magnitude over Conv/Linear weights) zeroes weights but leaves every
tensor dense: onnxruntime runs the zeros too, so the gain is a smaller *compressed* file, not
speed. Structured (Torch-Pruning's dependency graph, which keeps residual adds and concats
consistent) removes whole channels: smaller tensors, fewer MACs, real speedups, and an accuracy
drop that a short fine-tune on separate labelled data can recover.

Pruning needs the nn.Module itself; every variant is a deep copy, exported again to ONNX.
"""

from __future__ import annotations

import copy
import dataclasses
import gzip
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from edgekit.accuracy import is_classifier_output, task_accuracy
from edgekit.errors import EdgekitError
from edgekit.model.inputs import InputSpec
from edgekit.model.samples import (
    batch_first,
    check_data_matches,
    generate_samples,
    load_npz,
    model_feeds,
)
from edgekit.passes import Pass, PassContext, PassFailed, Variant

KINDS = ("unstructured", "structured")
# Channel counts stay multiples of 8: onnxruntime's x86 NCHWc conv kernels block channels by 8
# (AVX2) or 16 (AVX-512) and pad the rest; 8 also fills whole NEON vectors on ARM.
ROUND_TO = 8
# lr 1e-3: on the digits model at structured 0.5, 3 epochs recover 0.99 (1e-4: 0.98).
FINETUNE = {"optimizer": "Adam", "lr": 1e-3, "batch_size": 64, "seed": 0}


@dataclass(frozen=True)
class PruneSpec:
    kind: str  # one of KINDS
    amount: float  # fraction of weights (unstructured) or of channels per layer (structured)

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.amount:g}"


@dataclass(frozen=True)
class PrunePlan:
    """The pruning pass's settings: what to prune and what to fine-tune on, checked before any
    work starts."""

    specs: tuple[PruneSpec, ...] = ()
    finetune_epochs: int = 0
    train_path: Path | None = None
    train_inputs: dict[str, np.ndarray] | None = None  # batch-first, in the model's input order
    train_labels: np.ndarray | None = None
    notes: tuple[str, ...] = ()  # go into the report's notes


@dataclass(frozen=True)
class Prune(Pass):
    """Each --prune spec from the export's torch model (the pipeline adds their int8)."""

    name: ClassVar[str] = "prune"
    settings: PrunePlan = PrunePlan()

    @classmethod
    def check(cls, options, specs: list[InputSpec], feeds: dict[str, np.ndarray]) -> Prune:
        return cls(
            plan_pruning(options.prune, options.finetune_epochs, options.train_data, specs, feeds)
        )

    def run(self, variants: list[Variant], ctx: PassContext) -> list[Variant]:
        return pruned_variants(self.settings, ctx.loaded, ctx.specs, variants[0], ctx)


def parse_prune_spec(text: str) -> PruneSpec:
    kind, _, amount = text.strip().partition(":")
    try:
        value = float(amount)
    except ValueError:
        value = -1.0
    if kind not in KINDS or not 0 < value < 1:
        raise EdgekitError(
            f"Cannot read --prune {text!r}. Write KIND:AMOUNT with KIND unstructured or "
            "structured and AMOUNT a fraction between 0 and 1, e.g. `--prune structured:0.3`."
        )
    return PruneSpec(kind, value)


def plan_pruning(
    prune: Sequence[str],
    finetune_epochs: int,
    train_data: Path | None,
    specs: list[InputSpec],
    eval_feeds: dict[str, np.ndarray],
) -> PrunePlan:
    """Parse --prune and load --train-data; bad input raises EdgekitError."""
    prune_specs = tuple(dict.fromkeys(parse_prune_spec(t) for t in prune))
    if finetune_epochs < 0:
        raise EdgekitError("--finetune-epochs must be 0 or more.")
    if (finetune_epochs or train_data) and not prune_specs:
        raise EdgekitError(
            "--finetune-epochs and --train-data fine-tune pruned models; add --prune KIND:AMOUNT."
        )
    if bool(finetune_epochs) != bool(train_data):
        raise EdgekitError(
            "Fine-tuning needs both --finetune-epochs N and --train-data FILE.npz (labelled "
            "samples kept apart from --data, so the reported accuracy is measured on data the "
            "model was not tuned on)."
        )
    if not train_data:
        return PrunePlan(prune_specs, finetune_epochs)
    arrays, labels = load_npz(train_data)
    if labels is None or not np.issubdtype(labels.dtype, np.integer):
        raise EdgekitError(
            f"The training data {train_data} needs integer class ids in an array named `labels` "
            "to fine-tune with cross-entropy."
        )
    check_data_matches(specs, arrays, str(train_data))
    count = len(labels.reshape(-1))
    train_inputs = {s.name: batch_first(arrays[s.name], s, count) for s in specs}
    overlap = _shared_samples(train_inputs, eval_feeds)
    notes = (
        f"{overlap} of the {len(next(iter(eval_feeds.values())))} evaluation samples also "
        f"appear in --train-data {train_data}: accuracy after fine-tuning is optimistic",
    )
    return PrunePlan(
        prune_specs,
        finetune_epochs,
        Path(train_data),
        train_inputs,
        labels.reshape(-1),
        notes if overlap else (),
    )


def _shared_samples(train: dict[str, np.ndarray], evaluation: dict[str, np.ndarray]) -> int:
    """How many evaluation samples are byte-identical to a training sample (all inputs)."""

    def keys(arrays):
        return [
            b"".join(arrays[n][i].tobytes() for n in arrays)
            for i in range(len(arrays[next(iter(arrays))]))
        ]

    seen = set(keys(train))
    return sum(key in seen for key in keys(evaluation))


def pruned_variants(
    plan: PrunePlan,
    loaded,
    specs: list[InputSpec],
    parent: Variant,
    ctx: PassContext,
) -> list[Variant]:
    """One variant per --prune spec (exported from the pruned torch model, `parent` being the
    unpruned export). Failures become error rows."""
    if not plan.specs:
        return []
    ctx.notes += plan.notes
    finetune = plan.finetune_epochs > 0
    if finetune and not is_classifier_output(ctx.reference):
        ctx.notes.append(
            "fine-tuning after pruning needs a classifier output (N, classes) to train with "
            "cross-entropy; the pruned variants are not fine-tuned"
        )
        finetune = False
    unprunable = _why_unprunable(loaded)
    variants = []
    for spec in plan.specs:
        name = spec.name + ("-ft" if finetune else "")
        try:
            if unprunable:
                raise PassFailed(unprunable)
            with ctx.step(f"pruning: {name}"):
                variant = prune_variant(
                    spec, loaded, specs, parent, ctx, plan if finetune else None
                )
        except PassFailed as exc:
            passes = [{"name": f"prune-{spec.kind}", "settings": _settings(spec)}]
            failed = Variant(name, None, parent.name, passes)
            failed.error = str(exc)
            variants.append(failed)
            continue
        variants.append(variant)
    return variants


def _why_unprunable(loaded) -> str | None:
    import torch

    module = loaded.module
    if isinstance(module, torch.nn.Module) and loaded.format != "torchscript":
        return None
    kind = {
        "torchscript": "a TorchScript archive",
        "exported_program": "a torch.export program (.pt2)",
        "onnx": "an ONNX file",
    }.get(loaded.format, f"a {loaded.format} model")
    return (
        f"pruning needs the model's nn.Module, and {loaded.path} is {kind}. Save the trained "
        "weights with torch.save(model.state_dict()) and pass them with --arch, or save the "
        "whole module (--trust-pickle)."
    )


def _settings(spec: PruneSpec) -> dict:
    if spec.kind == "unstructured":
        return {"amount": spec.amount, "method": "global L1 magnitude", "layers": "Conv, Linear"}
    return {
        "ratio": spec.amount,
        "importance": "L1 magnitude per channel group",
        "round_to": ROUND_TO,
        "tool": "torch-pruning",
    }


def prune_variant(
    spec: PruneSpec,
    loaded,
    specs: list[InputSpec],
    parent: Variant,
    ctx: PassContext,
    finetune_on: PrunePlan | None = None,
) -> Variant:
    """Prune a copy of loaded.module, fine-tune it if asked, export it as `<spec.name>[-ft]`.
    Raises PassFailed when this model cannot be pruned so."""
    import torch

    from edgekit.model.export import check_parity, export_onnx

    name = spec.name + ("-ft" if finetune_on else "")
    example = tuple(
        torch.from_numpy(a) for a in model_feeds(generate_samples(specs, 1), specs).values()
    )
    passes = [{"name": f"prune-{spec.kind}", "settings": _settings(spec)}]
    notes = []
    try:
        module = copy.deepcopy(loaded.module).eval()  # the loaded model stays as it was
        shapes_before = _output_shapes(module, example)
        macs_before, params_before = _count(module, example)
        if spec.kind == "unstructured":
            pruned = _mask_unstructured(module, spec.amount)
        else:
            passes[0]["settings"]["kept_output_layers"] = _prune_structured(
                module, spec.amount, example
            )
            pruned = []
        if _output_shapes(module, example) != shapes_before:
            raise PassFailed("pruning changed the shape of the model's outputs")
    except PassFailed:
        raise
    except Exception as exc:  # Torch-Pruning, the MAC count or the pruned forward pass fails
        raise PassFailed(
            f"{spec.kind} pruning does not work on this model ({type(exc).__name__}: "
            f"{str(exc)[:300]}); its layers or forward() are outside what "
            f"{'Torch-Pruning' if spec.kind == 'structured' else 'torch.nn.utils.prune'} handles"
        ) from None

    finetune = None
    if finetune_on is not None:
        try:
            finetune = _finetune(module, finetune_on, ctx)
        except Exception as exc:  # e.g. labels outside the model's classes
            raise PassFailed(
                f"fine-tuning the pruned model failed ({type(exc).__name__}: {str(exc)[:300]})"
            ) from None
        settings = {k: finetune[k] for k in (*FINETUNE, "epochs", "train_data")}
        passes.append({"name": "finetune", "settings": settings})
        notes.append(_finetune_note(finetune))
    for layer, attr in pruned:  # bake the masks into the weights before export
        torch.nn.utils.prune.remove(layer, attr)
    macs_after, params_after = _count(module, example)

    out_path = ctx.path_for(name)
    pruned_model = dataclasses.replace(loaded, module=module)
    try:
        export = export_onnx(pruned_model, specs, out_path)
        parity = check_parity(pruned_model, out_path, ctx.feeds, specs)
    except EdgekitError as exc:
        raise PassFailed(f"the pruned model could not be exported: {exc}") from None
    passes.append(
        {"name": "export", "settings": {"exporter": export["exporter"], "opset": export["opset"]}}
    )
    notes.append(
        f"export parity of the pruned model vs its torch self: max |err| "
        f"{parity['max_abs_err']:.2e}"
    )
    notes += export.get("notes", [])

    sparsity = _weight_sparsity(out_path)
    size, fp32_size = _gzip_size(out_path), _gzip_size(parent.path)
    if spec.kind == "unstructured":
        notes.append(
            f"no speedup expected: dense kernels multiply the zeros too ({sparsity:.1%} of the "
            f"weights are zero); the benefit is the compressed size, {size:,} bytes gzip'd vs "
            f"{fp32_size:,} for {parent.name}"
        )
    else:
        notes.append(
            f"MACs {macs_before:,} → {macs_after:,} ({macs_after / macs_before:.0%}), "
            f"parameters {params_before:,} → {params_after:,}"
        )
    variant = Variant(name, out_path, parent.name, passes, notes)
    variant.extra["pruning"] = {
        "kind": spec.kind,
        "amount": spec.amount,
        "round_to": ROUND_TO if spec.kind == "structured" else None,
        "sparsity": sparsity,
        "macs_before": macs_before,
        "macs_after": macs_after,
        "params_before": params_before,
        "params_after": params_after,
        "compressed_size_bytes": size,
        "fp32_compressed_size_bytes": fp32_size,
        "finetune": finetune,
    }
    return variant


def _output_shapes(module, example) -> list[tuple]:
    import torch
    from torch.utils._pytree import tree_leaves

    with torch.no_grad():
        outputs = module(*example)
    return [tuple(t.shape) for t in tree_leaves(outputs) if isinstance(t, torch.Tensor)]


def _count(module, example) -> tuple[int, int]:
    import torch_pruning as tp

    macs, params = tp.utils.count_ops_and_params(module, example)
    return int(macs), int(params)


def _mask_unstructured(module, amount: float) -> list[tuple]:
    """Global L1 masks over all Conv/Linear weights; returns the (layer, "weight") pairs masked.
    The masks stay (re-applied on every forward) so fine-tuning cannot revive pruned weights."""
    import torch
    from torch.nn.utils import prune

    layers = [
        (m, "weight")
        for m in module.modules()
        if isinstance(m, (torch.nn.modules.conv._ConvNd, torch.nn.Linear))
    ]
    if not layers:
        raise PassFailed("the model has no Conv or Linear weights to prune")
    prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=amount)
    return layers


def _prune_structured(module, ratio: float, example) -> list[str]:
    """Remove channels in place; returns the names of the output layers kept whole."""
    import torch_pruning as tp

    kept = _output_layers(module, example)
    pruner = tp.pruner.BasePruner(
        module,
        example,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=ratio,
        ignored_layers=kept,
        round_to=ROUND_TO,
    )
    pruner.step()
    names = {m: n for n, m in module.named_modules()}
    return [names.get(m, type(m).__name__) for m in kept]


def _output_layers(module, example) -> list:
    """The Conv/Linear layers whose output channels are the model's outputs (the classifier, a
    detection head): pruning them would change what the model returns."""
    import torch
    import torch_pruning as tp

    graph = tp.DependencyGraph().build_dependency(module, example_inputs=example)
    found = []
    for group in graph.get_all_groups(
        root_module_types=(torch.nn.modules.conv._ConvNd, torch.nn.Linear)
    ):
        for dep, _ in group:
            outputs = dep.target.outputs
            # a node that feeds nothing, or feeds the graph's output op, produces an output
            at_output = not outputs or any(isinstance(o.module, tp.ops._OutputOp) for o in outputs)
            if graph.is_out_channel_pruning_fn(dep.handler) and at_output:
                found.append(group[0][0].target.module)
                break
    return found


def _finetune(module, plan: PrunePlan, ctx: PassContext) -> dict:
    """A short seeded fine-tune on --train-data; accuracy before and after is measured on the
    report's evaluation data (--data), never on the training samples."""
    import torch

    before = _accuracy(module, ctx)
    torch.manual_seed(FINETUNE["seed"])
    order = torch.Generator().manual_seed(FINETUNE["seed"])
    labels = torch.from_numpy(plan.train_labels).long()
    optimizer = torch.optim.Adam(module.parameters(), lr=FINETUNE["lr"])
    batch = FINETUNE["batch_size"]
    module.train()
    loss = None
    for _ in range(plan.finetune_epochs):
        perm = torch.randperm(len(labels), generator=order)
        for start in range(0, len(labels), batch):
            idx = perm[start : start + batch].numpy()
            if len(idx) < 2:  # batch norm cannot train on a single sample
                continue
            taken = {n: a[idx] for n, a in plan.train_inputs.items()}
            outputs = module(*_tensors(taken, ctx))
            loss = torch.nn.functional.cross_entropy(outputs, labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    module.eval()
    return {
        **FINETUNE,
        "epochs": plan.finetune_epochs,
        "train_data": str(plan.train_path),
        "train_samples": len(labels),
        "final_batch_loss": None if loss is None else float(loss.detach()),
        "accuracy_before": before,
        "accuracy_after": _accuracy(module, ctx),
    }


def _finetune_note(finetune: dict) -> str:
    before, after = finetune["accuracy_before"], finetune["accuracy_after"]
    result = (
        f"task accuracy on --data {before:.4f} before, {after:.4f} after"
        if before is not None
        else "task accuracy not measured (no labels in --data)"
    )
    return (
        f"fine-tuned {finetune['epochs']} epoch(s) on {finetune['train_data']} "
        f"({finetune['train_samples']} samples): {result}"
    )


def _accuracy(module, ctx: PassContext) -> float | None:
    import torch

    if ctx.labels is None:
        return None
    count = len(ctx.labels)
    with torch.no_grad():
        logits = [
            module(*_tensors({n: a[i : i + 64] for n, a in ctx.feeds.items()}, ctx))
            for i in range(0, count, 64)
        ]
    return task_accuracy(torch.cat(logits).numpy(), ctx.labels)


def _tensors(feeds: dict[str, np.ndarray], ctx: PassContext) -> list:
    """Batch-first samples as the torch module takes them (its layout, by model_feeds)."""
    import torch

    return [torch.from_numpy(a) for a in model_feeds(feeds, ctx.specs).values()]


def _weight_sparsity(path: Path) -> float | None:
    """Fraction of exact zeros in the exported weight tensors (float initializers of 2+ dims)."""
    import onnx
    from onnx import numpy_helper

    zeros = total = 0
    for tensor in onnx.load(str(path)).graph.initializer:
        if tensor.data_type == onnx.TensorProto.FLOAT and len(tensor.dims) >= 2:
            array = numpy_helper.to_array(tensor)
            zeros += int(np.count_nonzero(array == 0))
            total += array.size
    return zeros / total if total else None


def _gzip_size(path: Path) -> int:
    """Bytes of the model's files gzip'd (level 6): what a download or an OTA update costs."""
    from edgekit.onnxfile import files_on_disk

    return sum(len(gzip.compress(f.read_bytes(), 6)) for f in files_on_disk(path))
