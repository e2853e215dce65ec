"""The samples a run feeds the model: read from --data (.npz, never unpickled) or generated from
the input specs (fitted to what the graph reads), and `resolve_samples`, the one rule for both
commands. Torch-free: the device side uses it too."""

from __future__ import annotations

import dataclasses
import math
import zipfile
from collections.abc import Container, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.model.inputs import (
    MAX_SAMPLE_BYTES,
    SUPPORTED_DTYPES,
    Constant,
    InputSpec,
    batch_of,
    default_range,
    number,
    parse_arguments,
    ranged_inputs,
)
from edgekit.model.onnx_inputs import OnnxInputs

NORMAL_TEXT = "normal random, mean 0, std 1 (no range given with --input)"


def generate_samples(
    specs: list[InputSpec], count: int, seed: int = 0, normal: Container[str] = ()
) -> dict[str, np.ndarray]:
    """`count` random samples per input, batch-first (an input without a batch axis gets one
    value, the same for every sample). Float inputs named in `normal` are drawn from N(0, 1)
    (NORMAL_TEXT), the others uniformly from their spec's range."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in specs:
        shape = spec.sample_shape(count)
        size = math.prod(shape) * np.dtype(spec.dtype).itemsize
        if size > MAX_SAMPLE_BYTES:
            raise EdgekitError(
                f"{count} random sample(s) for the input {spec.name!r} of shape {spec.shape} "
                f"would take {size / 2**30:,.1f} GiB; edgekit refuses over "
                f"{MAX_SAMPLE_BYTES / 2**30:g} GiB. Check the input's shape, or pass fewer real "
                "samples with --data FILE.npz."
            )
        if spec.value is not None:
            feeds[spec.name] = np.full(shape, spec.value, dtype=spec.dtype)
        elif spec.dtype == "bool":
            feeds[spec.name] = rng.integers(0, 2, size=shape).astype(bool)
        elif np.issubdtype(np.dtype(spec.dtype), np.integer):
            feeds[spec.name] = rng.integers(int(spec.low), int(spec.high), size=shape).astype(
                spec.dtype
            )
        elif spec.name in normal:
            feeds[spec.name] = rng.standard_normal(size=shape).astype(spec.dtype)
        else:
            feeds[spec.name] = rng.uniform(spec.low, spec.high, size=shape).astype(spec.dtype)
    return {spec.name: batch_first(feeds[spec.name], spec, count) for spec in specs}


# Samples are batch-first everywhere edgekit holds them (`a[i:j]` takes samples i to j, `len(a)`
# counts them); the model's own layout (its batch on another axis, or no batch axis) exists only
# where they are fed: these two functions go between the two.


def batch_first(array: np.ndarray, spec: InputSpec, count: int) -> np.ndarray:
    """`count` samples of `spec` in the model's layout (as --data holds them), batch-first. An
    input without a batch axis is the same for every sample: its value repeated (a view)."""
    array = np.asarray(array)
    if spec.batch_axis is None:
        return np.broadcast_to(array, (count, *array.shape))
    return np.moveaxis(array, spec.batch_axis, 0)


def model_feeds(feeds: dict[str, np.ndarray], specs: Sequence[InputSpec] = ()) -> dict:
    """Batch-first samples as the model takes them: moved to each input's batch axis, and an
    input without one as its one value. An input `specs` does not name is batched on axis 0 (a
    0-d array: one value for every sample). Plain C-ordered copies, as onnxruntime and torch
    take them (a model may write into its inputs): the one place samples are fed (run_onnx, the torch runs, the benchmark's batch,
    calibration, pruning)."""
    axes = {s.name: s.batch_axis for s in specs}
    out = {}
    for name, array in feeds.items():
        axis = axes.get(name, 0)
        if np.ndim(array) == 0:
            out[name] = np.array(array)
        elif axis is None:
            out[name] = np.array(array[0], order="C")
        else:
            out[name] = np.array(np.moveaxis(array, 0, axis), order="C")
    return out


def sample_count(feeds: dict[str, np.ndarray]) -> int:
    """How many samples the (batch-first) feeds hold."""
    return min(len(a) for a in feeds.values())


def load_npz(path: Path) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Read `--data FILE.npz`: arrays named after the inputs, plus optional `labels`.
    Never unpickles: object arrays are refused."""
    path = Path(path)
    save_hint = "Save it with numpy.savez(path, <input name>=array, ..., labels=array)."
    if path.is_dir():
        raise EdgekitError(
            f"The data file {path} is a folder. Pass the .npz file itself to --data. " + save_hint
        )
    if not path.is_file():
        raise EdgekitError(
            f"The data file {path} does not exist. Pass an existing .npz file to --data."
        )
    with open(path, "rb") as handle:
        head = handle.read(6)
    if head == b"\x93NUMPY":
        raise EdgekitError(
            f"The data file {path} is a single .npy array, not an .npz archive of named arrays. "
            + save_hint
        )
    if not head.startswith(b"PK"):
        raise EdgekitError(
            f"The data file {path} is not an .npz archive (a zip file). " + save_hint
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise EdgekitError(
            f"The data file {path} is not a readable .npz archive ({exc}). " + save_hint
        ) from None
    labels = arrays.pop("labels", None)
    if not arrays:
        only = "only labels" if labels is not None else "no arrays"
        raise EdgekitError(
            f"The data file {path} holds {only} and no input arrays. Add one array per model "
            "input, named after the input, with samples on the first axis. " + save_hint
        )
    for name, array in arrays.items():
        _check_data_array(path, name, array)
    if labels is not None and labels.ndim != 1:
        raise EdgekitError(
            f"The labels in {path} have shape {labels.shape}; they must have shape (N,): one "
            "class index (or value) per sample. Save argmax(one_hot, axis=1) for one-hot labels."
        )
    return arrays, labels


def _check_data_array(path: Path, name: str, array: np.ndarray) -> None:
    if array.ndim == 0:
        return  # a rank-0 input's value, the same for every sample; checked against the spec
    if len(array) == 0:
        raise EdgekitError(
            f"The array {name!r} in {path} holds 0 samples (shape {array.shape}). Save at least "
            "one sample on the first axis."
        )
    if np.issubdtype(array.dtype, np.floating):
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise EdgekitError(
                f"The array {name!r} in {path} holds {bad} NaN or infinite value(s); drift and "
                "accuracy cannot be measured on them. Replace or drop those samples."
            )


def specs_from_data(arrays: dict[str, np.ndarray]) -> list[InputSpec]:
    """Input specs with batch 1 taken from the arrays of a data file, in file order."""
    specs = []
    for name, array in arrays.items():
        dtype = str(array.dtype)
        if dtype not in SUPPORTED_DTYPES:
            raise EdgekitError(
                f"The data array {name!r} has dtype {dtype}, which is not supported."
            )
        low, high = (float(array.min()), float(array.max())) if array.size else default_range(dtype)
        if high <= low:
            high = low + 1
        if array.ndim == 0:
            specs.append(InputSpec(name, (), dtype, low, high, None))
        else:
            specs.append(InputSpec(name, (1, *array.shape[1:]), dtype, low, high))
    return specs


def check_data_matches(specs: list[InputSpec], arrays: dict[str, np.ndarray], source: str) -> None:
    """Fail clearly when data arrays do not fit the model's inputs (names, shapes, dtypes)."""
    missing = [s.name for s in specs if s.name not in arrays]
    if missing:
        raise EdgekitError(
            f"The data in {source} has no array for the model input(s) {missing}; it has "
            f"{sorted(arrays)}. Name the arrays after the inputs (or rename the inputs with --input)."
        )
    counts = set()
    for spec in specs:
        array = arrays[spec.name]
        if spec.batch_axis is None:
            if tuple(array.shape) != tuple(spec.shape):
                raise EdgekitError(
                    f"The data array {spec.name!r} has shape {tuple(array.shape)}, but the model "
                    f"input has no batch axis and shape {tuple(spec.shape)} (the same value for "
                    "every sample): save it with exactly that shape. Fix the data or the --input "
                    "spec (B marks a batch axis, e.g. 2xBx128)."
                )
        else:
            axis = spec.batch_axis
            got = array.shape[:axis] + array.shape[axis + 1 :] if array.ndim > axis else None
            want = spec.shape[:axis] + spec.shape[axis + 1 :]
            if got is None or array.ndim != len(spec.shape) or tuple(got) != tuple(want):
                raise EdgekitError(
                    f"The data array {spec.name!r} has shape {tuple(array.shape)}, but the model "
                    f"input takes {spec.notation()} (samples on axis {axis}, the rest "
                    f"{tuple(want)}). Fix the data or the --input spec."
                )
            counts.add(array.shape[axis])
        if _kind(array.dtype) != _kind(np.dtype(spec.dtype)):
            raise EdgekitError(
                f"The data array {spec.name!r} holds {array.dtype} values, but the model input "
                f"takes {spec.dtype}: converting would change the values. Save the array as "
                f"{spec.dtype} (or fix the --input spec)."
            )

    if len(counts) > 1:
        raise EdgekitError(
            f"The arrays in {source} have different sample counts ({sorted(counts)}) on their "
            "batch axes; every input (and the labels) must hold the same samples."
        )


def _kind(dtype: np.dtype) -> str:
    """b(ool), i(nteger) or f(loat): within a kind, data is converted to the input's dtype."""
    return "i" if dtype.kind == "u" else dtype.kind


@dataclass
class Samples:
    """The inputs of a run: their specs and the samples (batch axis first) that drift,
    calibration and the benchmark use."""

    specs: list[InputSpec]
    feeds: dict[str, np.ndarray]  # every sample, batch-first, in the input's dtype
    labels: np.ndarray | None
    data: Path | None  # the --data file; None when the samples are generated
    constants: list[Constant] = dataclasses.field(default_factory=list)
    ranged: frozenset[str] = frozenset()  # inputs whose value range --input gave
    # How each generated input was made, where it differs from its spec's range (fitted_to).
    generated_as: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def batch(self) -> int:
        """The batch the model is timed (and drift measured) at: the first batched input's."""
        return batch_of(self.specs)

    def first_batch(self) -> dict[str, np.ndarray]:
        """One batch, as the benchmark feeds it (the model's layout)."""
        return model_feeds(
            {s.name: self.feeds[s.name][: self.batch] for s in self.specs}, self.specs
        )

    def to_json(self) -> dict:
        """The report's `data` section; `generated_inputs` says how each input was made."""
        out = {
            "path": str(self.data) if self.data else None,
            "samples": sample_count(self.feeds),
            "labels": self.labels is not None,
            "generated": self.data is None,
        }
        if self.data is None:
            out["generated_inputs"] = {
                s.name: self.generated_as.get(s.name) or _generated_text(s) for s in self.specs
            }
        return out

    def generated_note(self) -> list[str]:
        """The report note that says what the generated inputs hold; [] with --data."""
        if self.data is not None:
            return []
        made = "; ".join(f"{k}: {v}" for k, v in self.to_json()["generated_inputs"].items())
        return [
            f"NO --data: drift is measured, and static int8 calibrated, on SYNTHETIC inputs "
            f"({made}). int8 ranges calibrated on them may not fit real inputs, and the drift "
            "may not be the drift on real data: give `--data FILE.npz` with real samples"
        ]

    def fitted_to(self, path: Path) -> Samples:
        """Generated integer inputs as the model at `path` (its ONNX graph) reads them, where
        --input gave no range: an attention mask all ones, token type ids zeros, position ids
        0, 1, 2, …, and token ids across the vocabulary (the rows of the embedding table a
        Gather reads with that input); other inputs as they are."""
        if self.data is not None:
            return self
        rows = gathered_rows(path)
        count = sample_count(self.feeds)
        rng = np.random.default_rng(1)
        feeds, said = dict(self.feeds), dict(self.generated_as)
        for spec in self.specs:
            integer = spec.dtype != "bool" and np.issubdtype(np.dtype(spec.dtype), np.integer)
            if not integer or spec.name in self.ranged or spec.value is not None:
                continue
            made = _integer_values(spec, rows.get(spec.name), spec.sample_shape(count), rng)
            if made is not None:
                feeds[spec.name] = batch_first(made[0], spec, count)
                said[spec.name] = made[1]
        return dataclasses.replace(self, feeds=feeds, generated_as=said)


def _generated_text(spec: InputSpec) -> str:
    if spec.value is not None:
        return f"the value {number(spec.value, spec.dtype)} in every sample"
    if spec.dtype == "bool":
        return "random true/false"
    if np.issubdtype(np.dtype(spec.dtype), np.integer):
        return f"random integers {int(spec.low)} to {int(spec.high) - 1}"
    return f"uniform random {spec.low:g} to {spec.high:g}"


def _integer_values(spec: InputSpec, rows: int | None, shape: tuple, rng):
    """(values, what they are) for an integer input the name or the graph explains; else None."""
    name = spec.name.lower()
    if "mask" in name:
        return np.ones(shape, spec.dtype), "all ones (an attention mask: every position attended)"
    if name.endswith(("token_type_ids", "segment_ids")):
        return np.zeros(shape, spec.dtype), "all zeros (token type ids: one segment)"
    if name.endswith("position_ids") and shape:
        positions = np.broadcast_to(np.arange(shape[-1]), shape).astype(spec.dtype)
        return positions, "0, 1, 2, … along the last axis (position ids)"
    if rows and rows - 1 <= np.iinfo(spec.dtype).max:
        return rng.integers(0, rows, size=shape).astype(spec.dtype), (
            f"token ids drawn from 0 to {rows - 1} (the embedding table a Gather reads with "
            f"this input has {rows} rows)"
        )
    return None


# Ops that pass an input's values on unchanged (as indices) on the way to a Gather.
_PASS_THROUGH = {"Cast", "Identity", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Expand"}


def gathered_rows(path: Path) -> dict[str, int]:
    """{graph input: rows of the table (an initializer) a Gather reads with it as indices}."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    inputs = {i.name for i in graph.input}
    tables = {t.name: t.dims[0] for t in graph.initializer if t.dims}
    producer = {out: node for node in graph.node for out in node.output}
    rows: dict[str, int] = {}
    for node in graph.node:
        if node.op_type != "Gather" or len(node.input) < 2 or node.input[0] not in tables:
            continue
        if any(a.name == "axis" and a.i != 0 for a in node.attribute):
            continue
        source = node.input[1]
        while source not in inputs and source in producer:
            before = producer[source]
            if before.op_type not in _PASS_THROUGH or not before.input:
                break
            source = before.input[0]
        if source in inputs:
            rows[source] = max(rows.get(source, 0), int(tables[node.input[0]]))
    return rows


def resolve_samples(
    texts: Sequence[str],
    from_file: list[InputSpec] | OnnxInputs | None,
    data: Path | None,
    generated: int,
) -> Samples:
    """The one rule for both commands: the specs from --input (checked against an ONNX file's
    inputs), else the shapes the model file carries, else the shapes of the --data arrays; the
    samples from --data (at least one batch), else `generated` random ones (at least one batch)."""
    arrays, labels = load_npz(data) if data else (None, None)
    constants: list[Constant] = []
    if isinstance(from_file, OnnxInputs):
        specs = from_file.resolve(texts) if texts else from_file.specs(arrays)
    elif texts:
        specs, constants = parse_arguments(texts)
    elif from_file:
        specs = from_file
    elif arrays is not None:
        specs = specs_from_data(arrays)
    else:
        raise EdgekitError(
            "This model file does not say what input it takes. Give its shape with "
            "`--input NAME:1x3x224x224:float32` (repeat for several inputs), or pass real samples "
            "with `--data FILE.npz` (arrays named after the inputs)."
        )
    batch = batch_of(specs)
    if arrays is None:  # whole batches: a model exported with its batch fixed runs no other
        # Float inputs without a range given are drawn from N(0, 1): trained models see
        # normalized inputs, centred on 0, and uniform [0, 1) would calibrate int8 on half of
        # that range only.
        ranged = ranged_inputs(texts)
        normal = {
            s.name: NORMAL_TEXT
            for s in specs
            if s.name not in ranged
            and s.value is None
            and np.issubdtype(np.dtype(s.dtype), np.floating)
        }
        feeds = generate_samples(specs, -(-max(generated, batch) // batch) * batch, normal=normal)
        return Samples(specs, feeds, None, None, constants, ranged, generated_as=normal)
    check_data_matches(specs, arrays, str(data))
    batched = [s for s in specs if s.batch_axis is not None]
    count = arrays[batched[0].name].shape[batched[0].batch_axis] if batched else 1
    if labels is not None and len(labels) != count:
        raise EdgekitError(
            f"The data file {data} has {len(labels)} labels for {count} samples; give one label "
            "per sample."
        )
    if count < batch:
        raise EdgekitError(
            f"The data file {data} has {count} sample(s), fewer than one batch of the model "
            f"({batch}, the batch axis of --input). Give more samples or a smaller batch."
        )
    feeds = {
        s.name: batch_first(arrays[s.name].astype(s.dtype, copy=False), s, count) for s in specs
    }
    return Samples(specs, feeds, labels, Path(data), constants)
