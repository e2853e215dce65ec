"""A TorchScript model that keeps state between calls (its forward() assigns attributes of its
own, like a streaming voice-activity detector storing its recurrent state) as a function an ONNX
graph can hold: each state attribute becomes an input, and its value after the call an output
named `<attribute>_next`. The caller feeds each output back as the next call's input."""

from __future__ import annotations

import torch

from edgekit.errors import EdgekitError
from edgekit.model.formats import preview
from edgekit.model.inputs import InputSpec
from edgekit.model.load import LoadedModel
from edgekit.model.samples import generate_samples
from edgekit.textsafe import plain


def make_state_explicit(model: LoadedModel, specs: list[InputSpec]) -> str | None:
    """Replace `model.module` by its explicit-state form when every attribute its forward()
    assigns is a tensor named in `specs` (--input); an EdgekitError saying what to do otherwise.
    Returns a note for the report (None for a model without state)."""
    if not model.state:
        return None
    values = {name: _attribute(model.module, name) for name in model.state}
    by_name = {s.name: s for s in specs}
    tensors = all(isinstance(v, torch.Tensor) for v in values.values())
    if not tensors or model.constants or any(n not in by_name for n in values):
        raise _state_error(model, values, tensors and not model.constants)
    values = {s.name: values[s.name] for s in specs if s.name in values}  # in --input's order
    for name, value in values.items():
        _check_spec(by_name[name], value)
    inputs = [s for s in specs if s.name not in values]
    feeds = generate_samples(specs, 1, seed=0)
    example = tuple(torch.from_numpy(feeds[s.name]) for s in inputs)
    try:
        from torch._export.converter import TS2EPConverter

        program = TS2EPConverter(model.module, example).convert().run_decompositions()
        explicit = ExplicitState(program, [s.name for s in specs], list(values))
    except Exception as exc:
        raise EdgekitError(
            f"{model.path} keeps state between calls, and torch could not convert its "
            f"TorchScript graph to take that state as inputs: {_first_line(exc)}. Export a "
            "forward() that takes the state and returns the new state yourself (a state "
            "written inside an if on the data is one the converter cannot take)."
        ) from None
    model.module = explicit
    shown = ", ".join(f"self.{plain(n)}" for n in values)
    outputs = ", ".join(f"{plain(n)}_next" for n in values)
    return (
        f"forward() keeps state between calls ({shown}): exported as inputs of those names, "
        f"with the state after the call as the outputs {outputs}; feed each back as the next "
        "call's input"
    )


class ExplicitState(torch.nn.Module):
    """forward(*tensors, in the order of the input specs) → {"output" (or "output_<i>"): the
    model's outputs, "<name>_next": each state attribute after the call}. Runs the converter's
    functional graph: a state attribute is read from its input, its assignment becomes an
    output; the weights stay buffers of this module."""

    def __init__(self, program, order: list[str], state: list[str]):
        super().__init__()
        from torch.export.graph_signature import InputKind

        self.graph = program.graph_module
        self.order, self.state = order, state
        # per graph placeholder: ("input", position in forward's *tensors) or ("weight", buffer)
        self.places = []
        users = iter(i for i, name in enumerate(order) if name not in state)
        tables = {**program.state_dict, **program.constants}
        for i, spec in enumerate(program.graph_signature.input_specs):
            if spec.kind == InputKind.USER_INPUT:
                self.places.append(("input", next(users)))
            elif spec.target in state:
                self.places.append(("input", order.index(spec.target)))
            else:
                self.register_buffer(f"weight_{i}", tables[spec.target].detach(), persistent=False)
                self.places.append(("weight", f"weight_{i}"))
        self.outputs = [(s.kind.name, s.target) for s in program.graph_signature.output_specs]

    def forward(self, *tensors):
        args = [
            getattr(self, where) if kind == "weight" else tensors[where]
            for kind, where in self.places
        ]
        results, after = [], {}
        for (kind, target), value in zip(self.outputs, self.graph(*args), strict=True):
            if kind == "USER_OUTPUT":
                results.append(value)
            elif kind == "BUFFER_MUTATION":
                after[target] = value
        named = (
            {"output": results[0]}
            if len(results) == 1
            else {f"output_{i}": r for i, r in enumerate(results)}
        )
        for name in self.state:  # one the converted graph never writes keeps its input
            named[f"{name}_next"] = after.get(name, tensors[self.order.index(name)])
        return named


def _attribute(module, dotted: str):
    value = module
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _held(name: str, value: torch.Tensor) -> InputSpec:
    """The --input spec of a state attribute as the model holds it now."""
    return InputSpec(name, tuple(value.shape), str(value.dtype).removeprefix("torch."))


def _flag(spec: InputSpec) -> str:
    return f"--input {plain(spec.name)}:{spec.notation()}:{spec.dtype}"


def _check_spec(spec: InputSpec, value: torch.Tensor) -> None:
    held = _held(spec.name, value)
    same = len(spec.shape) == len(held.shape) and all(
        a == b
        for i, (a, b) in enumerate(zip(spec.shape, held.shape, strict=True))
        if i != spec.batch_axis
    )
    if not same or spec.dtype != held.dtype:
        raise EdgekitError(
            f"--input {plain(spec.name)} gives the state attribute self.{plain(spec.name)} as "
            f"{spec.dtype} of shape {spec.notation()}, but the model holds it as {held.dtype} "
            f"of shape {held.notation()}. Give it that shape and type (the batch axis may "
            f"differ): {_flag(held)}."
        )


def _state_error(model: LoadedModel, values: dict, explicit_possible: bool) -> EdgekitError:
    shown = preview([f"self.{plain(name)}" for name in values], 6)
    text = (
        f"{model.path} is a TorchScript model whose forward() keeps state between calls: it "
        f"assigns {shown} (prim::SetAttr, in forward() or a method it calls), e.g. a streaming "
        "model storing its recurrent state or sample-rate context on itself. An ONNX graph "
        "cannot hold state between calls: an export would freeze that state at one value and "
        "compute something else. "
    )
    if explicit_possible:
        specs = " ".join(_flag(_held(n, v)) for n, v in values.items())
        return EdgekitError(
            text + "Every piece of it is a tensor, so edgekit can export it as inputs, with the "
            f"state after the call as outputs: name each with --input, as now held: {specs} "
            "(beside the model's own inputs)."
        )
    kinds = [f"self.{plain(n)}" for n, v in values.items() if not isinstance(v, torch.Tensor)]
    why = (
        f"{', '.join(kinds)} {'is' if len(kinds) == 1 else 'are'} not a tensor"
        if kinds
        else "forward() also takes non-tensor arguments (--input NAME=VALUE)"
    )
    return EdgekitError(
        text + f"edgekit cannot export it as inputs here: {why}. Export a forward() that takes "
        "the state as inputs and returns the new state as outputs (forward(x, h) -> (y, "
        "h_next); then give it as `--input h:...`), or use the ONNX file the model's authors "
        "publish, if any."
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return plain(text[0][:300]) if text else type(exc).__name__
