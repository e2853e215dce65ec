"""Passes: each takes variants and writes new ONNX files. Passes never benchmark.

A pass is an object (a `Pass` subclass) made from the user's options, and
`edgekit.passes.pipeline.PIPELINE` names the passes in the order optimize() runs them. A pass
that cannot produce its variant returns it with `error` set (or raises PassFailed inside
`attempt`): the report gets an error row and the run goes on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    from edgekit.api import OptimizeOptions
    from edgekit.model.inputs import InputSpec
    from edgekit.model.load import LoadedModel
    from edgekit.recommend import Budget

REWRITE_TOLERANCE = 1e-4  # relative to the largest output: only float reassociation may differ
# The outputs of a variant on all samples are kept (the int8 pass judges a recipe by them, the
# report's drift needs them again) up to this many bytes in all: a segmentation model's outputs
# on many samples would otherwise hold gigabytes.
OUTPUTS_KEPT_BYTES = 512 * 2**20


@dataclass
class Variant:
    """One artifact (ONNX, or another runtime's) and how it was made."""

    name: str
    path: Path | None
    parent: str | None = None
    passes: list[dict] = field(
        default_factory=list
    )  # [{"name": ..., "settings": {...}}], root first
    notes: list[str] = field(default_factory=list)
    error: str | None = None  # set when the pass failed; path is then None
    extra: dict = field(default_factory=dict)  # pass-specific report fields (e.g. sparsity)
    runtime: str = "onnxruntime"  # what runs it (edgekit.runtimes); its file's suffix says so too

    def child(self, name: str, path: Path, pass_name: str, settings: dict) -> Variant:
        return Variant(
            name=name,
            path=path,
            parent=self.name,
            passes=[*self.passes, {"name": pass_name, "settings": settings}],
        )

    def failed_child(self, name: str, pass_name: str, settings: dict, error: str) -> Variant:
        child = self.child(name, None, pass_name, settings)
        child.error = error
        return child


class PassFailed(Exception):
    """A pass could not produce its variant."""


def attempt(parent: Variant, name: str, pass_name: str, settings: dict, make: Callable) -> Variant:
    """Run `make()`; a PassFailed becomes a failed child variant instead of ending the run."""
    try:
        return make()
    except PassFailed as exc:
        return parent.failed_child(name, pass_name, settings, str(exc))


class Pass:
    """One step of optimize(), subclassed as a frozen dataclass with a `name` and its
    `settings` (a frozen dataclass). `check` reads the user's options into the settings and
    raises EdgekitError on bad ones, before any work starts; `run` makes the pass's new variants
    from those so far, each recording its pass and settings in `passes`. The pipeline, not the
    pass, makes the int8 variants of the float ones it returns."""

    name: ClassVar[str]
    settings: Any

    @classmethod
    def check(
        cls, options: OptimizeOptions, specs: list[InputSpec], feeds: dict[str, np.ndarray]
    ) -> Pass:
        return cls()  # a pass with nothing to choose

    def run(self, variants: list[Variant], ctx: PassContext) -> list[Variant]:
        raise NotImplementedError


def _this_machine() -> dict:
    from edgekit.cpus import this_machine

    return this_machine()


@dataclass
class PassContext:
    """What passes may use. `feeds` are the samples drift is measured on (batch-first; fed
    in the model's layout by edgekit.model.samples.model_feeds, with `specs`);
    `reference` the float model's outputs on them."""

    staging: Path  # write variant files here, named <variant name>.onnx
    feeds: dict[str, np.ndarray]
    labels: np.ndarray | None
    reference: list[np.ndarray]
    data_is_real: bool  # feeds came from --data, not generated
    budget: Budget
    step: Callable  # progress: `with ctx.step("what") as update:`
    notes: list[str] = field(default_factory=list)  # report-level: what was tried/skipped and why
    # Drift is measured at the batch the model is timed and deployed at: dynamic int8 computes
    # activation scales over the whole batch, so its outputs depend on the batch size.
    batch: int = 1
    loaded: LoadedModel | None = None  # the torch module, for passes on it
    specs: list[InputSpec] = field(default_factory=list)
    output_kinds: dict = field(default_factory=dict)  # edgekit.accuracy.output_kinds
    # The CPU the int8 variants are made for (edgekit.cpus.made_for: --for-cpu, the --target
    # device, or this machine), worked out once by optimize().
    cpu: dict = field(default_factory=_this_machine)
    # outputs(path) on all samples, by the file's (path, size, modification time)
    _kept: dict = field(default_factory=dict, repr=False)

    def path_for(self, name: str) -> Path:
        return self.staging / f"{name}.onnx"

    def outputs(self, path: Path, feeds: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
        """The model's outputs on `feeds` (default: all samples), run at the deployment batch.
        A variant's file (path_for: in `staging`) runs on all samples once; its outputs are kept
        for the next ask (trial files elsewhere, e.g. the sensitivity search's, are not)."""
        from edgekit.accuracy import run_onnx

        path = Path(path).resolve()
        if feeds is not None or path.parent != Path(self.staging).resolve():
            return run_onnx(
                path, self.feeds if feeds is None else feeds, chunk=self.batch, specs=self.specs
            )
        key = self._key(path)
        if key not in self._kept:
            outputs = run_onnx(path, self.feeds, chunk=self.batch, specs=self.specs)
            self.keep_outputs(path, outputs)
            return outputs
        return self._kept[key]

    def keep_outputs(self, path: Path, outputs: list[np.ndarray]) -> None:
        """`outputs(path)` is `outputs` (the model at `path` ran on all samples, at the
        deployment batch), kept while the outputs kept stay under OUTPUTS_KEPT_BYTES."""
        held = sum(a.nbytes for kept in self._kept.values() for a in kept)
        if held + sum(a.nbytes for a in outputs) <= OUTPUTS_KEPT_BYTES:
            self._kept[self._key(path)] = outputs

    @staticmethod
    def _key(path: Path) -> tuple:
        path = Path(path).resolve()
        stat = path.stat()
        return str(path), stat.st_size, stat.st_mtime_ns


def same_function(before: Path, after: Path, ctx: PassContext, what: str) -> None:
    """A rewrite must compute the same function as its parent (float reassociation aside) on
    every sample; else PassFailed, and the rewritten file is removed. (The outputs of both are
    those the report's drift uses: run once.)"""
    from edgekit.accuracy import difference, largest_finite

    expected, got = ctx.outputs(before), ctx.outputs(after)
    worst = max(difference(a, b) for a, b in zip(expected, got, strict=True))
    tolerance = REWRITE_TOLERANCE * max(1.0, largest_finite(expected))
    if not worst <= tolerance:  # a NaN difference too
        after.unlink(missing_ok=True)
        raise PassFailed(
            f"{what}'s outputs differ from {before.stem}'s by {worst:.3g} (tolerance "
            f"{tolerance:.3g}); the parent is kept"
        )


def float_parent(variants: list[Variant]) -> Variant:
    """The float model later passes build on: the simplified one where simplification worked
    (quantizing the simplified graph is what pays, see design.md), else the export."""
    return next((v for v in variants if v.name == "simplified" and not v.error), variants[0])
