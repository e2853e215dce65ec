"""Passes: each takes a Variant and writes new ONNX files. Passes never benchmark.

A pass that cannot produce its variant returns it with `error` set (or raises PassFailed inside
`attempt`): the report gets an error row and the run goes on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Variant:
    """One ONNX artifact and how it was made."""

    name: str
    path: Path | None
    parent: str | None = None
    passes: list[dict] = field(
        default_factory=list
    )  # [{"name": ..., "settings": {...}}], root first
    notes: list[str] = field(default_factory=list)
    error: str | None = None  # set when the pass failed; path is then None
    extra: dict = field(default_factory=dict)  # pass-specific report fields (e.g. sparsity)

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


@dataclass
class PassContext:
    """What passes may use. `feeds` are the samples drift is measured on (batch axis first);
    `reference` the float model's outputs on them."""

    staging: Path  # write variant files here, named <variant name>.onnx
    feeds: dict[str, np.ndarray]
    labels: np.ndarray | None
    reference: list[np.ndarray]
    data_is_real: bool  # feeds came from --data, not generated
    budget: object  # edgekit.recommend.Budget
    step: Callable  # progress: `with ctx.step("what") as update:`
    notes: list[str] = field(default_factory=list)  # report-level: what was tried/skipped and why

    def path_for(self, name: str) -> Path:
        return self.staging / f"{name}.onnx"
