"""Model file → torch object, or a checked ONNX model; the format comes from formats.py.

Formats: TorchScript archive (torch.jit.save), torch.export program (.pt2), torch.save of a
state_dict (needs `arch`), torch.save of a whole module (needs `trust_pickle`), ONNX.
Every bad input becomes an EdgekitError with one paragraph saying what to do.
"""

from __future__ import annotations

import logging
import pickle
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError
from edgekit.fsutil import sha256_file
from edgekit.logcapture import logs_captured
from edgekit.model.formats import is_torch_file, model_format, not_a_model, preview, read_head
from edgekit.model.inputs import InputSpec
from edgekit.model.onnx_inputs import OnnxInputs
from edgekit.model.pickle_scan import forced_weights_only, refuse_unsafe_pt2, unsafe_globals
from edgekit.model.user_code import build_arch, import_code, pickle_with_fallback
from edgekit.textsafe import plain

# Keys under which training scripts commonly nest the weights in a checkpoint dict.
_CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")


@dataclass
class LoadedModel:
    path: Path
    format: str  # torchscript, exported_program, pickled_module, state_dict or onnx
    sha256: str
    module: Any | None  # nn.Module / ScriptModule / ExportedProgram; None for onnx
    # When the file carries shapes: a .pt2's specs; an ONNX file's declared inputs, which --input
    # may complete (unknown axes) and is checked against.
    input_specs: list[InputSpec] | OnnxInputs | None
    files: list[Path] = field(default_factory=list)  # onnx: the model and its external data
    # Non-tensor forward() arguments bound with --input NAME=VALUE (edgekit.model.inputs.Constant):
    # passed to the torch model and baked into the export.
    constants: list = field(default_factory=list)
    # TorchScript: the attributes forward() assigns (state kept between calls), dotted from the model
    state: list[str] = field(default_factory=list)


def load_model(
    path,
    *,
    arch: str | None = None,
    code: Sequence[str] = (),
    trust_pickle: bool = False,
) -> LoadedModel:
    path = Path(path)
    kind = model_format(path)
    sha = sha256_file(path)
    if kind == "exported_program":
        return _load_pt2(path, sha, trust_pickle)
    if kind == "torchscript":
        return _load_torchscript(path, sha)
    if kind == "torch_save":
        return _load_torch_save(path, sha, arch, code, trust_pickle)
    return _load_onnx(path, sha)


def load_onnx(path, *, read_inputs: bool = True) -> LoadedModel:
    """An ONNX file, for commands that only run ONNX models (`edgekit bench`, on a device without
    torch): parsed and checked like `load_model` does, except ONNX's checker, which refuses
    models onnxruntime runs well (a missing output shape); onnxruntime decides, and a model it
    cannot run becomes an error row. `read_inputs=False` when the caller has the input specs
    already (--input)."""
    path = Path(path)
    if is_torch_file(read_head(path)):
        raise EdgekitError(
            f"{path} is a PyTorch file, not an ONNX model. This command runs ONNX models: "
            f"`edgekit optimize {path}` exports it (and benchmarks the variants it makes)."
        )
    return _load_onnx(path, sha256_file(path), read_inputs, checker=False)


# ---------------------------------------------------------------------------- per format


def _load_torchscript(path: Path, sha: str) -> LoadedModel:
    import torch

    try:
        with warnings.catch_warnings():  # torch 2.10+ calls torch.jit deprecated; it still works
            warnings.simplefilter("ignore")
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # torch raises RuntimeError for anything corrupt inside
        raise _corrupt(path, "TorchScript archive", exc) from None
    module.eval()
    # state its forward() writes: made explicit inputs and outputs, or refused, once the input
    # specs are known (edgekit.model.state)
    return LoadedModel(path, "torchscript", sha, module, None, state=_state_writes(module))


def _state_writes(module) -> list[str]:
    """The attributes a ScriptModule's forward() assigns, as dotted paths from the model: every
    prim::SetAttr in its inlined graph (methods it calls and branches included)."""
    try:
        graph = module.inlined_graph
    except Exception:  # a module without a scripted forward: nothing to inspect
        return []
    names = set()
    for node in graph.findAllNodes("prim::SetAttr", recurse=True):
        path, owner = [node.s("name")], node.inputsAt(0).node()
        while owner.kind() == "prim::GetAttr":
            path.insert(0, owner.s("name"))
            owner = owner.inputsAt(0).node()
        names.add(".".join(path))
    return sorted(names)


def _load_pt2(path: Path, sha: str, trust_pickle: bool) -> LoadedModel:
    import torch

    if not trust_pickle:
        refuse_unsafe_pt2(path)
    try:
        # Untrusted, every torch.load inside is forced to weights_only as a second line of defence.
        # torch logs a failed load with a traceback to stderr (and raises 'check the warnings
        # above'): those records are kept for the error message instead.
        with logs_captured(_torch_loggers()) as records, forced_weights_only(not trust_pickle):
            program = torch.export.load(str(path))
    except Exception as exc:
        logged = [r.exc_info[1] for r in records if r.exc_info and r.exc_info[1]]
        raise _corrupt(path, "torch.export program (.pt2)", logged[0] if logged else exc) from None
    if not isinstance(program, torch.export.ExportedProgram):
        raise not_a_model(path, "it is a .pt2 archive without an exported program")
    return LoadedModel(path, "exported_program", sha, program, _specs_from_program(program))


def _torch_loggers() -> list[logging.Logger]:
    """torch's logger and those of its modules that print on their own (have a handler)."""
    return [logging.getLogger("torch")] + [
        logger
        for name, logger in logging.root.manager.loggerDict.items()
        if name.startswith("torch.") and isinstance(logger, logging.Logger) and logger.handlers
    ]


def _specs_from_program(program) -> list[InputSpec] | None:
    import torch

    args, kwargs = program.example_inputs or ((), {})
    names = list(program.graph_signature.user_inputs)
    tensors = [*args, *kwargs.values()]
    if not tensors or len(names) != len(tensors):
        return None
    specs = []
    for name, tensor in zip(names, tensors, strict=True):
        if not isinstance(tensor, torch.Tensor):
            return None
        dtype = str(tensor.dtype).removeprefix("torch.")
        if tensor.dtype.is_floating_point:
            low, high = 0.0, 1.0
        else:  # token ids and the like: stay inside the range the example used
            low, high = 0.0, float(tensor.max()) + 1 if tensor.numel() else 100.0
        specs.append(InputSpec(name, (1, *tensor.shape[1:]), dtype, low, high))
    return specs


def _load_torch_save(path, sha, arch, code, trust_pickle) -> LoadedModel:
    import torch

    try:
        obj = torch.load(str(path), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        if "global" not in str(exc).lower():
            raise _corrupt(path, "torch.save file", exc) from None
        return _load_pickled_module(path, sha, code, trust_pickle)
    except Exception as exc:
        raise _corrupt(path, "torch.save file", exc) from None

    state_dict = _find_state_dict(obj)
    if state_dict is None:
        raise not_a_model(
            path, f"it is a torch.save file holding a {type(obj).__name__}, not model weights"
        )
    if arch is None:
        raise EdgekitError(
            f"{path} holds only weights (a state_dict with {len(state_dict)} tensors) and no "
            "architecture. Tell edgekit how to build the model with `--arch module:Factory` or "
            "`--arch path/to/file.py:Factory`, where Factory is a class or function that takes no "
            "arguments and returns the nn.Module these weights belong to."
        )
    module = build_arch(arch)
    _load_weights(module, state_dict, path, arch)
    module.eval()
    return LoadedModel(path, "state_dict", sha, module, None)


def _find_state_dict(obj) -> dict | None:
    """The weights in a plain state_dict or in a common checkpoint dict; None if neither."""
    import torch

    def is_state_dict(value) -> bool:
        return (
            isinstance(value, dict)
            and bool(value)
            and all(isinstance(k, str) for k in value)
            and all(isinstance(v, torch.Tensor) for v in value.values())
        )

    if is_state_dict(obj):
        found = obj
    elif isinstance(obj, dict):
        found = next((obj[k] for k in _CHECKPOINT_KEYS if is_state_dict(obj.get(k))), None)
        if found is None:
            return None
    else:
        return None
    # nn.DataParallel / DistributedDataParallel save every key under "module.".
    if all(k.startswith("module.") for k in found):
        found = {k.removeprefix("module."): v for k, v in found.items()}
    return found


def _load_weights(module, state_dict: dict, path: Path, arch: str) -> None:
    expected = module.state_dict().keys()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    fix = "Point --arch at the exact architecture (and settings) the weights were trained with."
    if missing or unexpected:
        raise EdgekitError(
            f"The weights in {path} do not fit the model built by --arch {arch}: "
            f"{len(missing)} missing key(s) {preview(missing)} and "
            f"{len(unexpected)} unexpected key(s) {preview(unexpected)}. {fix}"
        )
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:  # same keys, different shapes
        detail = one_line(str(exc), 400)
        raise EdgekitError(
            f"The weights in {path} do not fit the model built by --arch {arch}: {detail}. {fix}"
        ) from None


def _load_pickled_module(path, sha, code, trust_pickle) -> LoadedModel:
    import torch

    needed = unsafe_globals(path)
    needs = f" (it needs {preview(needed)})" if needed else ""
    if not trust_pickle:
        raise EdgekitError(
            f"{path} holds a pickled Python object{needs}, such as a whole model saved with "
            "torch.save(model). Loading it means unpickling, which runs code from the file. Pass "
            "--trust-pickle only if you trust where the file came from, together with "
            "--code path/to/file.py (or a module path) so the model's class is importable. Safer: "
            "save model.state_dict() and use --arch, or save with torch.jit.save / torch.export.save."
        )
    code_modules = [import_code(item) for item in code]
    try:
        obj = torch.load(
            str(path),
            weights_only=False,
            map_location="cpu",
            pickle_module=pickle_with_fallback(code_modules),
        )
    except (ImportError, AttributeError) as exc:
        raise EdgekitError(
            f"{path} is a pickled model whose class cannot be imported ({exc}){needs}. Pass the "
            "Python file that defines the class with --code path/to/file.py (or its module path, "
            "e.g. --code mypackage.models), so unpickling can find it."
        ) from None
    except Exception as exc:
        raise _corrupt(path, "pickled torch.save file", exc) from None

    if isinstance(obj, dict):  # a checkpoint that nests the whole module
        obj = next(
            (obj[k] for k in _CHECKPOINT_KEYS if isinstance(obj.get(k), torch.nn.Module)), obj
        )
    if not isinstance(obj, torch.nn.Module):
        raise not_a_model(path, f"it unpickles to a {type(obj).__name__}, not an nn.Module")
    obj.eval()
    return LoadedModel(path, "pickled_module", sha, obj, None)


def _load_onnx(path: Path, sha: str, read_inputs: bool = True, checker: bool = True) -> LoadedModel:
    import onnx

    head = read_head(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
        parsed = model.ir_version > 0
    except Exception:
        parsed = False
    # torch and most tools write ir_version first: field 1, varint (0x08).
    if not parsed or (not model.graph.node and head[:1] != b"\x08"):
        if head[:1] == b"\x08":
            raise EdgekitError(
                f"{path} starts like an ONNX model but cannot be parsed: it is probably truncated "
                "or corrupt (an interrupted download or copy?). Copy or export the file again."
            )
        raise not_a_model(path, "its contents are not a model format edgekit knows")
    if not model.graph.node:
        raise EdgekitError(
            f"{path} is an ONNX model without a graph: it holds no operators, so there is nothing "
            "to run. It was saved empty, or the file is truncated before its graph (an "
            "interrupted copy?); export or copy it again."
        )
    if not model.graph.output:
        raise EdgekitError(
            f"{path} is an ONNX model whose graph declares no outputs, so running it computes "
            "nothing edgekit can compare or time. Export it again with the model's results as "
            "graph outputs (torch.onnx.export does this for the tensors forward() returns)."
        )
    files = onnx_files(path)
    try:
        if checker:
            onnx.checker.check_model(str(path))
    except Exception as exc:
        raise EdgekitError(
            f"{path} is an ONNX model that fails ONNX's checker ({one_line(str(exc), 400)}). If it "
            "uses external data, keep the data file next to it; otherwise export it again."
        ) from None
    try:
        specs = OnnxInputs.read(path) if read_inputs else None
    except EdgekitError:
        raise
    except Exception as exc:  # onnxruntime refuses it (unknown op, bad opset, ...)
        raise EdgekitError(
            f"{path} is a valid ONNX model, but onnxruntime cannot load it ({_ort_detail(exc)}). "
            "Export it again with an opset and ops that onnxruntime supports."
        ) from None
    return LoadedModel(path, "onnx", sha, None, specs, files=files)


def onnx_files(path) -> list[Path]:
    """The files an ONNX model is made of: `path` first, then each external-data file its
    tensors name, as `path.parent / location` (keep `relative_to(path.parent)` beside a copy).
    A location outside the model's folder, or a missing file, is an EdgekitError."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    path = Path(path)
    folder = path.resolve().parent
    model = onnx.load(str(path), load_external_data=False)
    files = [path]
    for tensor in _get_all_tensors(model):
        if not uses_external_data(tensor):
            continue
        location = ExternalDataInfo(tensor).location
        target = (folder / location).resolve()  # follows symlinks: a link out is refused too
        if location and (folder / location).is_symlink():
            raise EdgekitError(
                f"{path} keeps the data of tensor {plain(tensor.name)!r} in {plain(location)!r}, "
                f"which is a symbolic link (to {plain(str(target))}). edgekit reads external "
                "data only from regular files beside the model, because a link can point at any "
                "file on this machine (and onnx refuses links too). Replace the link with a copy "
                "of the file, keeping its name."
            )
        if not location or not target.is_relative_to(folder) or target == path.resolve():
            raise EdgekitError(
                f"{path} says the data of tensor {plain(tensor.name)!r} is in "
                f"{plain(location)!r}, which is not a file in the model's folder. edgekit reads "
                "external data only from beside the model: save it again with "
                "onnx.save_model(..., save_as_external_data=True, location='model.onnx.data')."
            )
        if not target.is_file():
            raise EdgekitError(
                f"{path} keeps its weights in an external-data file {plain(location)!r}, which is "
                f"missing from {path.parent}. Copy that file next to the model (keep its name)."
            )
        file = path.parent / location
        if file not in files:
            files.append(file)
    return files


# onnxruntime puts its C++ source location and function signature before the reason.
_ORT_SOURCE = re.compile(r"/\S*onnxruntime\S*:\d+ [^(]*\([^)]*\)\s*")


def _ort_detail(exc: Exception) -> str:
    return one_line(_ORT_SOURCE.sub(" ", str(exc)), 600)


def one_line(text: str, limit: int) -> str:
    """`text` on one line, cut at a word boundary with "…" when longer than `limit`."""
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0] if " " in text[:limit] else text[:limit]
    return cut.rstrip(" ,;:") + "…"


def _corrupt(path: Path, kind: str, exc: Exception) -> EdgekitError:
    detail = one_line(str(exc), 300)
    return EdgekitError(
        f"{path} looks like a {kind} but loading it failed ({type(exc).__name__}: {detail}). "
        "The file may be truncated or corrupt, or saved by an incompatible torch version; "
        "save or copy it again."
    )
