"""Accuracy drift of a variant against the float reference, and task accuracy against labels.
Torch-free: runs the ONNX files with onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError


def run_onnx(path: Path, feeds: dict[str, np.ndarray], chunk: int = 64) -> list[np.ndarray]:
    """All outputs for all samples, `chunk` samples per call, or the model's own batch size
    where its batch axis is fixed (an ONNX file from elsewhere may have batch 1 baked in)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    total = len(next(iter(feeds.values())))
    fixed = {i.shape[0] for i in session.get_inputs() if i.shape and isinstance(i.shape[0], int)}
    if fixed:
        chunk = fixed.pop()
        if total % chunk:
            raise EdgekitError(
                f"{path.name} has a fixed batch size of {chunk}, and {total} samples do not "
                f"divide into batches of {chunk}. Give --data with a multiple of {chunk} samples, "
                "or export the model with a dynamic batch axis."
            )
    parts: list[list[np.ndarray]] = []
    for start in range(0, total, chunk):
        batch = {name: array[start : start + chunk] for name, array in feeds.items()}
        parts.append(session.run(None, batch))
    return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]


def is_classifier_output(outputs: list[np.ndarray]) -> bool:
    """One output of shape (N, classes) with classes > 1: argmax is a prediction."""
    return len(outputs) == 1 and outputs[0].ndim == 2 and outputs[0].shape[1] > 1


def _flat(outputs: list[np.ndarray]) -> np.ndarray:
    """Per-sample vectors of all outputs concatenated: shape (N, features)."""
    return np.concatenate([o.reshape(len(o), -1).astype(np.float64) for o in outputs], axis=1)


def drift(
    reference: list[np.ndarray], outputs: list[np.ndarray], labels: np.ndarray | None = None
) -> tuple[dict, dict]:
    """Drift metrics and the reasons for any that could not be measured.
    Returns (accuracy dict of the report contract, unmeasured {field: reason})."""
    ref, out = _flat(reference), _flat(outputs)
    err = np.abs(ref - out)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
    # Two all-zero vectors agree perfectly; one zero vector against a non-zero one does not.
    cosine = np.where(norms > 0, np.sum(ref * out, axis=1) / np.where(norms > 0, norms, 1), 1.0)
    cosine = np.where((norms == 0) & (np.abs(ref).sum(1) + np.abs(out).sum(1) > 0), 0.0, cosine)
    result = {
        "max_abs_err": float(err.max()),
        "mean_abs_err": float(err.mean()),
        "cosine_min": float(np.clip(cosine.min(), -1.0, 1.0)),
        "top1_agreement": None,
        "task_accuracy": None,
        "samples": len(ref),
    }
    unmeasured = {}
    if is_classifier_output(reference):
        result["top1_agreement"] = float(np.mean(reference[0].argmax(1) == outputs[0].argmax(1)))
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


def task_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(logits.argmax(1) == labels.reshape(-1)))
