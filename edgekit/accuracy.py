"""Accuracy drift of a variant against the float reference, and task accuracy against labels.
Torch-free: runs the ONNX files with onnxruntime."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgekit.errors import EdgekitError

if TYPE_CHECKING:
    from edgekit.model.inputs import InputSpec


def run_onnx(
    path: Path, feeds: dict[str, np.ndarray], chunk: int = 64, specs: Sequence[InputSpec] = ()
) -> list[np.ndarray]:
    """All outputs for all samples (`feeds` batch-first, fed in the layout `specs` give: see
    edgekit.model.samples.model_feeds), `chunk` samples per call, or the model's own batch size
    where its batch axis is fixed (an ONNX file from elsewhere may have batch 1 baked in).
    Runs any runtime's artifact (.xml, .tflite, .pte: edgekit.runtimes), an .onnx on
    onnxruntime. The one place edgekit runs a model outside the benchmark."""
    import onnxruntime as ort

    from edgekit.model.samples import model_feeds

    session = _session(path, list(feeds))
    names = [i.name for i in session.get_inputs()]
    missing = [n for n in names if n not in feeds]
    if missing:
        raise EdgekitError(
            f"The ONNX model {path} needs inputs {missing}, but only {list(feeds)} were given. "
            "Name the inputs with --input (or the arrays in --data) after the model's inputs."
        )
    # An input without a batch axis is the same for every sample: it does not count them.
    axes = _model_axes(feeds, specs)
    batched = [n for n in names if axes[n] is not None]
    total = min(len(feeds[n]) for n in batched) if batched else 1
    fixed = {
        dim
        for i in session.get_inputs()
        if axes[i.name] is not None
        and len(i.shape) > axes[i.name]
        and isinstance(dim := i.shape[axes[i.name]], int)
    }
    if fixed:
        chunk = fixed.pop()
        if total % chunk:
            raise EdgekitError(
                f"{Path(path).name} has a fixed batch size of {chunk}, and {total} samples do not "
                f"divide into batches of {chunk}. Give --data with a multiple of {chunk} samples, "
                "or export the model with a dynamic batch axis."
            )
    if not batched:
        chunk = total
    run_options = ort.RunOptions()
    run_options.log_severity_level = 4
    parts: list[list[np.ndarray]] = []
    for start in range(0, total, chunk):
        taken = {
            n: feeds[n] if np.ndim(feeds[n]) == 0 else feeds[n][start : start + chunk]
            for n in names
        }
        batch = model_feeds(taken, specs)
        parts.append(session.run(None, batch, run_options))
    if len(parts) == 1:
        return parts[0]
    out_axes = _output_axes(session, parts)
    return [
        parts[0][i] if axis is None else np.concatenate([p[i] for p in parts], axis=axis)
        for i, axis in enumerate(out_axes)
    ]


class _RuntimeSession:
    """Another runtime's session (edgekit.runtimes) as run_onnx uses onnxruntime's. Its inputs
    take the feeds' names where they are fed by position (a .tflite's `args_0` is the ONNX
    model's `x`: edgekit.runtimes.fit_feeds); shapes have None for a dynamic axis."""

    def __init__(self, path: Path, feed_names: list[str]) -> None:
        from edgekit import runtimes

        self._session = runtimes.load(path, threads=0)
        own = [t.name for t in self._session.inputs]
        by_position = len(own) == len(feed_names) and not set(own) <= set(feed_names)
        self._names = feed_names if by_position else own

    def get_inputs(self):
        return [
            dataclasses.replace(t, name=n)
            for t, n in zip(self._session.inputs, self._names, strict=True)
        ]

    def get_outputs(self):
        return self._session.outputs

    def run(self, _names, feeds: dict[str, np.ndarray], _options=None) -> list[np.ndarray]:
        from edgekit.runtimes import fit_feeds

        fitted, _ = fit_feeds(self._session, {n: feeds[n] for n in self._names})
        return self._session.run(fitted)


def _session(path: Path, feed_names: list[str]):
    """onnxruntime's session for an .onnx, else the runtime its suffix names."""
    import onnxruntime as ort

    from edgekit.runtimes import runtime_for

    if runtime_for(path) != "onnxruntime":
        return _RuntimeSession(path, feed_names)
    options = ort.SessionOptions()
    options.log_severity_level = 4  # fatal only: failures come back as exceptions
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def first_samples(
    path: Path, feeds: dict[str, np.ndarray], count: int, specs: Sequence[InputSpec] = ()
) -> dict[str, np.ndarray]:
    """The first `count` samples of `feeds`, in whole batches (at least one) where the model at
    `path` fixes its batch axis: run_onnx can run it on nothing else."""
    fixed = fixed_batch(path, feeds, specs)
    if fixed:
        count = max(fixed, count // fixed * fixed)
    return {k: v[:count] for k, v in feeds.items()}


def fixed_batch(
    path: Path, feeds: dict[str, np.ndarray], specs: Sequence[InputSpec] = ()
) -> int | None:
    """The size the model at `path` fixes on an input's batch axis (given by `specs`, else 0),
    or None where the batch is dynamic: such a model runs whole batches only."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    axes = _model_axes(feeds, specs)
    for value in graph.input:
        axis = axes.get(value.name)
        dims = value.type.tensor_type.shape.dim
        if axis is not None and axis < len(dims) and dims[axis].dim_value > 0:
            return dims[axis].dim_value
    return None


def _model_axes(feeds: dict[str, np.ndarray], specs: Sequence[InputSpec]) -> dict:
    """Each fed input's batch axis in the model: its spec's, else 0 (None for a 0-d array)."""
    axes = {s.name: s.batch_axis for s in specs}
    return {n: None if np.ndim(a) == 0 else axes.get(n, 0) for n, a in feeds.items()}


def _output_axes(session, parts: list[list[np.ndarray]]) -> list[int | None]:
    """Each output's batch axis: its first symbolic axis in the graph, else the axis whose size
    follows the chunk sizes, else axis 0 (batch fixed in the graph); None for a rank-0 output."""
    axes = []
    for i, meta in enumerate(session.get_outputs()):
        shapes = [p[i].shape for p in parts]
        if not shapes[0]:
            axes.append(None)
            continue
        shape = meta.shape or []
        symbolic = [a for a, d in enumerate(shape) if not isinstance(d, int)]
        axis = symbolic[0] if symbolic and symbolic[0] < len(shapes[0]) else None
        if axis is None:
            varying = [a for a in range(len(shapes[0])) if len({s[a] for s in shapes}) > 1]
            axis = varying[0] if varying else 0
        axes.append(axis)
    return axes


def differences(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| element by element, for two runs of one output; the same non-finite value in
    both places (a model that returns NaN or infinity for some inputs, before and after a
    rewrite or export) is agreement, 0, not a difference. A NaN against a number stays NaN."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    with np.errstate(invalid="ignore"):
        return np.where(same, 0.0, np.abs(a - b))


def difference(a: np.ndarray, b: np.ndarray) -> float:
    """The largest of `differences` (NaN when one is NaN); 0.0 for empty outputs."""
    diff = differences(a, b)
    return float(diff.max()) if diff.size else 0.0


def largest_finite(outputs: list[np.ndarray]) -> float:
    """The largest finite |value| over the outputs; 0.0 when there is none (all NaN or inf)."""
    values = [np.abs(o[np.isfinite(o)]) for o in (np.asarray(o, np.float64) for o in outputs)]
    return max((float(v.max()) for v in values if v.size), default=0.0)


def check_finite_reference(reference: list[np.ndarray], names: list[str], primary: str, data):
    """The float model's own outputs: when every sample of the primary output is NaN or
    infinite there is nothing to measure drift against, and the report would be empty: exit 2
    (EdgekitError) with what to check. Some failed samples are reported, not refused."""
    out = np.asarray(reference[names.index(primary)])
    if out.size == 0 or not np.issubdtype(out.dtype, np.inexact):
        return
    if np.isfinite(out.reshape(len(out), -1) if out.ndim else out.reshape(1, -1)).all(axis=1).any():
        return
    source = f"the samples in {data}" if data else "the generated random samples"
    raise EdgekitError(
        f"The model's output {primary!r} is NaN or infinite on every sample ({source}), before "
        "edgekit changed anything: there is no drift to measure and no result worth timing. "
        "Check the model on its own (weights saved as NaN? a division by an input that is 0?), "
        "the --input values and ranges (e.g. a sample rate the model expects), or give real "
        "samples with --data FILE.npz."
    )


# What an output is called, and the op that computes it, tell a classifier's scores from an
# embedding (both are (samples, width)): top-1 agreement means something only for the first.
_CLASSIFIER_NAMES = re.compile(r"logit|score|prob|class|label|pred", re.I)
_EMBEDDING_NAMES = re.compile(r"embed|hidden|pool|feature|encod|vector|represent", re.I)
_HEAD_OPS = {"Gemm", "MatMul", "Softmax", "LogSoftmax", "Sigmoid"}
_PASS_OPS = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast"}


def output_kinds(
    reference: list[np.ndarray], names: list[str], primary: str, path: Path, labelled: bool
) -> dict[str, dict]:
    """{output name: {"kind": "classifier" | "embedding" | "tensor", "why": ...}}: whether each
    output holds class scores (top-1 agreement and a top-1 budget mean something), a vector
    (an embedding or features: judged by cosine), or another tensor. `path`: the float model's
    ONNX file; `labelled`: --data has labels, which make the primary output a classifier's."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    kinds = {}
    for name, out in zip(names, reference, strict=True):
        op = producer.get(name)
        while op is not None and op.op_type in _PASS_OPS and op.input:
            op = producer.get(op.input[0])
        computed_by = op.op_type if op is not None else "no operator"
        if (
            op is not None
            and op.op_type == "Add"
            and any(
                producer.get(i) is not None and producer[i].op_type in _HEAD_OPS for i in op.input
            )
        ):
            computed_by = "MatMul"  # a linear layer: MatMul, then its bias
        if not is_classifier_output([out]):
            kind, why = "tensor", f"its shape {list(out.shape[1:])} per sample is not (classes,)"
        elif labelled and name == primary:
            kind, why = "classifier", "the --data file has labels for it"
        elif _CLASSIFIER_NAMES.search(name):
            kind, why = "classifier", f"its name {name!r} says so"
        elif _EMBEDDING_NAMES.search(name):
            kind, why = "embedding", f"its name {name!r} says so"
        elif np.allclose(np.linalg.norm(out.reshape(len(out), -1), axis=1), 1.0, atol=1e-3):
            kind, why = "embedding", "every sample's vector has length 1 (a normalized embedding)"
        elif computed_by in _HEAD_OPS:
            kind, why = "classifier", f"a {computed_by} computes it (a linear or softmax head)"
        else:
            kind, why = (
                "embedding",
                (
                    f"a {computed_by} computes it, not a linear or softmax head: read as an embedding "
                    "or feature vector"
                ),
            )
        kinds[name] = {"kind": kind, "why": why}
    return kinds


def kind_note(kinds: dict[str, dict], primary: str) -> str:
    """The report note that says which output kind edgekit assumed, and what follows from it."""
    kind = kinds[primary]
    follows = {
        "classifier": "top-1 agreement is measured and the default budget is top-1",
        "embedding": "top-1 agreement (an argmax of a vector) means nothing and is not shown; "
        "the default budget is cosine",
        "tensor": "top-1 agreement is not shown; the default budget is cosine",
    }[kind["kind"]]
    return (
        f"edgekit read the output {primary!r} as {'an' if kind['kind'] == 'embedding' else 'a'} "
        f"{kind['kind']} ({kind['why']}): {follows}. `--max-drift` sets another budget."
    )


def is_classifier_output(outputs: list[np.ndarray]) -> bool:
    """One output of shape (N, classes) with classes > 1: argmax is a prediction."""
    return len(outputs) == 1 and outputs[0].ndim == 2 and outputs[0].shape[1] > 1


def _flat(outputs: list[np.ndarray]) -> np.ndarray:
    """Per-sample vectors of all outputs concatenated: shape (N, features)."""
    return np.concatenate([o.reshape(len(o), -1).astype(np.float64) for o in outputs], axis=1)


def drift_by_output(
    reference: list[np.ndarray],
    outputs: list[np.ndarray],
    labels: np.ndarray | None,
    names: list[str],
    primary: str,
    kinds: dict[str, dict] | None = None,
) -> tuple[dict, dict]:
    """Drift of each named output (`outputs: {name: {max_abs_err, mean_abs_err, cosine_min,
    top1_agreement, ...}}`), and the top-level metrics (those the budget and the recommendation
    read) of the primary output; `primary_output` names it. `kinds` (output_kinds): top-1
    agreement only for classifier outputs, and `output_kind` says what the primary one is."""
    if len(outputs) != len(names) or len(reference) != len(names):
        raise EdgekitError(
            f"The model has {len(outputs)} output(s) where {len(names)} were expected ({names})."
        )
    index = names.index(primary)
    result, unmeasured = drift([reference[index]], [outputs[index]], labels)
    per_output = {}
    for name, ref, out in zip(names, reference, outputs, strict=True):
        metrics, _ = drift([ref], [out], None)
        per_output[name] = {
            key: metrics[key]
            for key in ("cosine_min", "max_abs_err", "mean_abs_err", "top1_agreement")
        } | {"nonfinite_samples": metrics["nonfinite_samples"], "shape": list(out.shape[1:])}
    for name, kind in (kinds or {}).items():
        if kind["kind"] == "classifier":
            continue
        per_output[name]["top1_agreement"] = None
        if name == primary:
            result["top1_agreement"] = None
            unmeasured["accuracy.top1_agreement"] = (
                f"the output is read as {'an' if kind['kind'] == 'embedding' else 'a'} "
                f"{kind['kind']} ({kind['why']}), not class scores: an argmax of it means nothing"
            )
    if kinds:
        result["output_kind"] = kinds[primary]["kind"]
    result["primary_output"] = primary
    result["outputs"] = per_output
    return result, unmeasured


def drift(
    reference: list[np.ndarray], outputs: list[np.ndarray], labels: np.ndarray | None = None
) -> tuple[dict, dict]:
    """Drift metrics and the reasons for any that could not be measured.
    Returns (accuracy dict of the report contract, unmeasured {field: reason}).

    A sample whose outputs hold NaN or infinity has failed: it is counted in `nonfinite_samples`
    (and in `reference_nonfinite_samples` when the float reference itself failed on it), it never
    agrees and is never correct, and the error and cosine over all samples are then undefined:
    null, with the reason. NaN must never read as perfect agreement."""
    ref, out = _flat(reference), _flat(outputs)
    ref_ok, out_ok = np.isfinite(ref).all(axis=1), np.isfinite(out).all(axis=1)
    both_ok = ref_ok & out_ok
    n = len(ref)
    result = {
        "max_abs_err": None,
        "mean_abs_err": None,
        "cosine_min": None,
        "top1_agreement": None,
        "task_accuracy": None,
        "samples": n,
        "nonfinite_samples": int(n - out_ok.sum()),
        "reference_nonfinite_samples": int(n - ref_ok.sum()),
    }
    unmeasured = {}
    if both_ok.all():
        err = np.abs(ref - out)
        norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
        # Two all-zero vectors agree perfectly; one zero vector against a non-zero one does not.
        cosine = np.where(norms > 0, np.sum(ref * out, axis=1) / np.where(norms > 0, norms, 1), 1.0)
        cosine = np.where((norms == 0) & (np.abs(ref).sum(1) + np.abs(out).sum(1) > 0), 0.0, cosine)
        result["max_abs_err"] = float(err.max()) if err.size else 0.0
        result["mean_abs_err"] = float(err.mean()) if err.size else 0.0
        result["cosine_min"] = float(np.clip(cosine.min(), -1.0, 1.0)) if n else None
    else:
        why = nonfinite_text(result)
        for key in ("max_abs_err", "mean_abs_err", "cosine_min"):
            unmeasured[f"accuracy.{key}"] = f"{why}: the error over all samples is undefined"
    if is_classifier_output(reference) and is_classifier_output(outputs):
        agree = (reference[0].argmax(1) == outputs[0].argmax(1)) & both_ok
        result["top1_agreement"] = float(np.mean(agree))
    else:
        unmeasured["accuracy.top1_agreement"] = "the output is not classifier-shaped (N, classes)"
    if labels is None:
        unmeasured["accuracy.task_accuracy"] = "no labels given (add `labels` to the --data file)"
    elif is_classifier_output(outputs):
        result["task_accuracy"] = task_accuracy(outputs[0], labels)
    else:
        unmeasured["accuracy.task_accuracy"] = (
            "labels were given but the output is not classifier-shaped (N, classes)"
        )
    return result, unmeasured


def nonfinite_text(accuracy: dict) -> str:
    """Which samples failed (NaN or infinity), in words; '' when none did."""
    n = accuracy.get("samples")
    own = accuracy.get("nonfinite_samples") or 0
    ref = accuracy.get("reference_nonfinite_samples") or 0
    parts = []
    if ref:
        parts.append(
            f"the float reference itself gave NaN or infinity on {ref} of {n} samples "
            "(fix the model or the input data: drift against it means nothing)"
        )
    if own:
        parts.append(f"{own} of {n} samples gave NaN or infinity (failed samples)")
    return "; ".join(parts)


def task_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Share of samples predicted right; a sample with NaN or infinity in its logits is wrong."""
    ok = np.isfinite(logits.reshape(len(logits), -1)).all(axis=1)
    return float(np.mean((logits.argmax(1) == labels.reshape(-1)) & ok))


def check_labels(labels: np.ndarray | None, reference_outputs: list[np.ndarray], source) -> None:
    """Refuse labels that can never match the model's predictions (EdgekitError, exit 2): not
    whole numbers, not one label per sample, or outside the model's class range. Such labels
    would give every variant a task accuracy of 0 and an accuracy drop of 0 that passes any
    budget. `source` names where they came from (the --data file)."""
    if labels is None:
        return
    labels = np.asarray(labels)
    fix = (
        f"`labels` in {source} must be one integer class index per sample, shape (N,), "
        "as numpy.savez(path, ..., labels=np.array([3, 0, 7, ...]))."
    )
    if labels.dtype.kind not in "iuf":
        raise EdgekitError(
            f"The labels in {source} are of type {labels.dtype}, not class numbers. {fix}"
        )
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        hint = ""
        if labels.ndim == 2:
            hint = " If they are one-hot rows, save labels.argmax(1) instead."
        raise EdgekitError(
            f"The labels in {source} have shape {tuple(labels.shape)}; edgekit needs one class "
            f"index per sample.{hint} {fix}"
        )
    if labels.dtype.kind == "f" and not (
        np.isfinite(labels).all() and (labels == np.round(labels)).all()
    ):
        raise EdgekitError(
            f"The labels in {source} hold values that are not whole numbers (e.g. "
            f"{_first_bad(labels, ~(np.isfinite(labels) & (labels == np.round(labels))))}). {fix}"
        )
    samples = len(reference_outputs[0]) if reference_outputs else None
    if samples is not None and len(labels) != samples:
        raise EdgekitError(f"{source} has {len(labels)} labels for {samples} samples. {fix}")
    if not is_classifier_output(reference_outputs):
        return  # task accuracy is reported as not measurable, with the reason
    classes = reference_outputs[0].shape[1]
    outside = (labels < 0) | (labels >= classes)
    if outside.any():
        raise EdgekitError(
            f"The labels in {source} must be class indices 0 to {classes - 1} (the model has "
            f"{classes} outputs per sample), but {int(outside.sum())} of {len(labels)} are "
            f"outside that range (e.g. {_first_bad(labels, outside)}). Check that the labels "
            "belong to this model and count classes from 0."
        )


def _first_bad(values: np.ndarray, bad: np.ndarray):
    value = values[np.flatnonzero(bad)[0]]
    return value.item() if hasattr(value, "item") else value
