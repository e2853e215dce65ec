"""Model file → torch object. The format is detected from the file's bytes, never its name.

Formats: TorchScript archive (torch.jit.save), torch.export program (.pt2), torch.save of a
state_dict (needs `arch`), torch.save of a whole module (needs `trust_pickle`), ONNX.
Every bad input becomes an EdgekitError with one paragraph saying what to do.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import json
import logging
import os
import pickle
import pickletools
import re
import sys
import tarfile
import types
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError
from edgekit.fsutil import sha256_file
from edgekit.model.inputs import InputSpec, OnnxInputs
from edgekit.textsafe import plain

_ZIP_MAGIC = b"PK\x03\x04"
_SAVE_HINT = (
    "edgekit reads TorchScript (torch.jit.save), torch.export programs (torch.export.save), "
    "torch.save files (a state_dict with --arch, or a whole module with --trust-pickle) and ONNX."
)
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
    notes: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)  # onnx: the model and its external data
    # Non-tensor forward() arguments bound with --input NAME=VALUE (edgekit.model.inputs.Constant):
    # passed to the torch model and baked into the export.
    constants: list = field(default_factory=list)


def load_model(
    path,
    *,
    arch: str | None = None,
    code: Sequence[str] = (),
    trust_pickle: bool = False,
) -> LoadedModel:
    path = Path(path)
    check_model_file(path)
    sha = sha256_file(path)
    with open(path, "rb") as handle:
        head = handle.read(16)

    if head.startswith(_ZIP_MAGIC):
        names = _zip_names(path)
        if any(n.endswith("archive_format") for n in names):
            return _load_pt2(path, sha, trust_pickle)
        if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
            return _load_torchscript(path, sha)
        if any(n.endswith("data.pkl") for n in names):
            return _load_torch_save(path, sha, arch, code, trust_pickle)
        raise _not_a_model(path, f"it is a zip archive of other files ({_preview(names)})")
    if _is_pickle(head):  # torch.save's legacy (non-zip) format
        return _load_torch_save(path, sha, arch, code, trust_pickle)
    return _load_onnx(path, sha, head)


def load_onnx(path, *, read_inputs: bool = True) -> LoadedModel:
    """An ONNX file, for commands that only run ONNX models (`edgekit bench`, on a device without
    torch): parsed and checked like `load_model` does, except ONNX's checker, which refuses
    models onnxruntime runs well (a missing output shape); onnxruntime decides, and a model it
    cannot run becomes an error row. `read_inputs=False` when the caller has the input specs
    already (--input)."""
    path = Path(path)
    check_model_file(path)
    with open(path, "rb") as handle:
        head = handle.read(16)
    if head.startswith(_ZIP_MAGIC) or _is_pickle(head):
        raise EdgekitError(
            f"{path} is a PyTorch file, not an ONNX model. This command runs ONNX models: "
            f"`edgekit optimize {path}` exports it (and benchmarks the variants it makes)."
        )
    return _load_onnx(path, sha256_file(path), head, read_inputs, checker=False)


def _is_pickle(head: bytes) -> bool:
    return head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")


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
    written = _state_writes(module)
    if written:
        shown = _preview([f"self.{plain(name)}" for name in written], 6)
        raise EdgekitError(
            f"{path} is a TorchScript model whose forward() keeps state between calls: it "
            f"assigns {shown} (prim::SetAttr, in forward() or a method it calls), e.g. a "
            "streaming model storing its recurrent state or sample-rate context on itself. An ONNX graph cannot hold state "
            "between calls: an export would freeze that state at one value and compute "
            "something else. Export a forward() that takes the state as inputs and returns the "
            "new state as outputs (forward(x, h) -> (y, h_next); then give it as `--input "
            "h:...`), or use the ONNX file the model's authors publish, if any."
        )
    return LoadedModel(path, "torchscript", sha, module, None)


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
        _refuse_unsafe_pt2(path)
    try:
        # Untrusted, every torch.load inside is forced to weights_only as a second line of defence.
        with _torch_logs_captured() as records, _forced_weights_only(not trust_pickle):
            program = torch.export.load(str(path))
    except Exception as exc:
        logged = [r.exc_info[1] for r in records if r.exc_info and r.exc_info[1]]
        raise _corrupt(path, "torch.export program (.pt2)", logged[0] if logged else exc) from None
    if not isinstance(program, torch.export.ExportedProgram):
        raise _not_a_model(path, "it is a .pt2 archive without an exported program")
    return LoadedModel(path, "exported_program", sha, program, _specs_from_program(program))


# ---------------------------------------------------------------------------- .pt2 safety
# torch.export.load unpickles parts of a .pt2 archive with weights_only=False (sample inputs after
# a failed weights-only load, weights and constants marked use_pickle, opaque objects) and loads
# AOTInductor shared libraries: opening a file can run code from it. Untrusted, every entry that
# torch may unpickle is checked by reading its pickle opcodes, never by running them.

_PT2_TEXT = {"archive_format", "archive_version", "version", "byteorder", ".data/version"}
_PT2_TEXT |= {".data/serialization_id"}
_RAW_PAYLOAD = re.compile(r"(weight|tensor)_\d+")  # torch's names for raw tensor bytes
# The opcodes torch's weights-only unpickler implements; anything else it refuses.
_WEIGHTS_ONLY_OPCODES = frozenset(
    [
        "GLOBAL",
        "NEWOBJ",
        "REDUCE",
        "BUILD",
        "APPEND",
        "APPENDS",
        "SETITEM",
        "SETITEMS",
        "MARK",
        "TUPLE",
        "TUPLE1",
        "TUPLE2",
        "TUPLE3",
        "NONE",
        "NEWFALSE",
        "NEWTRUE",
        "EMPTY_TUPLE",
        "EMPTY_LIST",
        "EMPTY_DICT",
        "EMPTY_SET",
        "BININT",
        "BININT1",
        "BININT2",
        "BINFLOAT",
        "BINUNICODE",
        "SHORT_BINSTRING",
        "BINPERSID",
        "BINGET",
        "LONG_BINGET",
        "BINPUT",
        "LONG_BINPUT",
        "LONG1",
        "PROTO",
        "STOP",
    ]
)
_LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # torch.save's non-zip format: 5 pickles in a row


def _refuse_unsafe_pt2(path: Path) -> None:
    problems = _pt2_problems(path)
    if problems:
        raise EdgekitError(
            f"{path} is a torch.export archive (.pt2) that holds more than tensors and plain data: "
            f"{_preview([plain(p) for p in problems], 3)}. Loading it would unpickle those objects, "
            "which can run any code from the file, so edgekit refuses. Pass --trust-pickle only if "
            "you trust where the file came from; otherwise ask for a .pt2 saved by "
            "torch.export.save from a plain model, or an ONNX file."
        )


def _pt2_problems(path: Path) -> list[str]:
    """Entries of the archive that torch may unpickle and that hold anything outside torch's
    weights-only allow-list (or that cannot be read as such a pickle at all)."""
    problems = []
    with zipfile.ZipFile(path) as archive:
        infos = [i for i in archive.infolist() if not i.is_dir()]
        short = {i.filename: i.filename.split("/", 1)[-1] for i in infos}
        raw, pickled = set(), set()
        for info in infos:
            if short[info.filename].endswith(("_weights_config.json", "_constants_config.json")):
                problems += _read_payload_config(
                    archive.read(info), short[info.filename], raw, pickled
                )
        raw -= pickled
        for info in infos:
            name = short[info.filename]
            if name in raw:
                continue
            is_text = name in _PT2_TEXT or name.endswith(".json") or name.startswith("extra/")
            if is_text and name not in pickled:
                continue
            problems += [f"{name} ({why})" for why in _pickle_problems(archive.read(info))]
    return problems


def _read_payload_config(data: bytes, name: str, raw: set, pickled: set) -> list[str]:
    """Sort the files a weights/constants config names into raw tensor bytes and pickles."""
    folder = name.rsplit("/", 1)[0] + "/"
    try:
        entries = json.loads(data)["config"].values()
        for meta in entries:
            file = meta["path_name"]
            if not isinstance(file, str) or "/" in file or "\\" in file or ".." in file:
                return [f"{name} (names a file outside its folder: {file!r})"]
            is_raw = not meta.get("use_pickle") and _RAW_PAYLOAD.fullmatch(file)
            (raw if is_raw else pickled).add(folder + file)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return [f"{name} (not a readable config: {type(exc).__name__})"]
    return []


def _pickle_problems(data: bytes) -> list[str]:
    """Why unpickling `data` (as torch.load or pickle.loads would) could run code; [] if not."""
    if data.startswith(_ZIP_MAGIC):  # torch.save's zip format: the pickles are its .pkl files
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as inner:
                names = inner.namelist()
                if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
                    return ["a TorchScript archive"]
                return [
                    p for n in names if n.endswith(".pkl") for p in _scan_pickles(inner.read(n))
                ]
        except (zipfile.BadZipFile, OSError) as exc:
            return [f"an unreadable zip archive: {exc}"]
    if tarfile.is_tarfile(io.BytesIO(data)):  # torch.load's oldest format
        return ["a tar archive of pickles"]
    return _scan_pickles(data, legacy=True)


def _scan_pickles(data: bytes, legacy: bool = False) -> list[str]:
    import torch

    try:  # the names torch.load(weights_only=True) accepts
        from torch._weights_only_unpickler import _get_allowed_globals, _get_user_allowed_globals

        allowed = {*_get_allowed_globals(), *_get_user_allowed_globals()}
    except ImportError:  # a torch without them: allow nothing
        allowed = set()
    mapping = torch._weights_only_unpickler
    problems, stream = [], io.BytesIO(data)
    for index in range(5 if legacy else 1):
        try:
            ops = list(pickletools.genops(stream))
        except Exception as exc:
            return [*problems, f"not a pickle edgekit can check: {exc}"]
        for opcode, arg, _ in ops:
            if opcode.name not in _WEIGHTS_ONLY_OPCODES:
                problems.append(f"uses the pickle opcode {opcode.name}")
            elif opcode.name == "GLOBAL":
                module, name = arg.split(" ", 1)
                if (module, name) in mapping.NAME_MAPPING:
                    module, name = mapping.NAME_MAPPING[(module, name)]
                module = mapping.IMPORT_MAPPING.get(module, module)
                if f"{module}.{name}" not in allowed:
                    problems.append(f"calls {module}.{name}")
        is_magic = [(op.name, arg) for op, arg, _ in ops if op.name == "LONG1"] == [
            ("LONG1", _LEGACY_TORCH_MAGIC)
        ]
        if index == 0 and not is_magic:
            break
    return sorted(set(problems))


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@contextlib.contextmanager
def _torch_logs_captured():
    """torch logs a failed load with a traceback to stderr (and raises 'check the warnings
    above'): keep those records for the error message instead."""
    capture = _Records()
    loggers = [logging.getLogger("torch")] + [
        logger
        for name, logger in logging.root.manager.loggerDict.items()
        if name.startswith("torch.") and isinstance(logger, logging.Logger) and logger.handlers
    ]
    saved = [(logger, logger.handlers, logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.handlers, logger.propagate = [capture], False
    try:
        yield capture.records
    finally:
        for logger, handlers, propagate in saved:
            logger.handlers, logger.propagate = handlers, propagate


@contextlib.contextmanager
def _forced_weights_only(force: bool):
    """torch.load reads TORCH_FORCE_WEIGHTS_ONLY_LOAD on every call, even with weights_only=False."""
    keys = ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    saved = {key: os.environ.pop(key) for key in keys if force and key in os.environ}
    if force:
        os.environ[keys[0]] = "1"
    try:
        yield
    finally:
        if force:
            os.environ.pop(keys[0], None)
            os.environ.update(saved)


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
        raise _not_a_model(
            path, f"it is a torch.save file holding a {type(obj).__name__}, not model weights"
        )
    if arch is None:
        raise EdgekitError(
            f"{path} holds only weights (a state_dict with {len(state_dict)} tensors) and no "
            "architecture. Tell edgekit how to build the model with `--arch module:Factory` or "
            "`--arch path/to/file.py:Factory`, where Factory is a class or function that takes no "
            "arguments and returns the nn.Module these weights belong to."
        )
    module = _build_arch(arch)
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
            f"{len(missing)} missing key(s) {_preview(missing)} and "
            f"{len(unexpected)} unexpected key(s) {_preview(unexpected)}. {fix}"
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

    needed = _unsafe_globals(path)
    needs = f" (it needs {_preview(needed)})" if needed else ""
    if not trust_pickle:
        raise EdgekitError(
            f"{path} holds a pickled Python object{needs}, such as a whole model saved with "
            "torch.save(model). Loading it means unpickling, which runs code from the file. Pass "
            "--trust-pickle only if you trust where the file came from, together with "
            "--code path/to/file.py (or a module path) so the model's class is importable. Safer: "
            "save model.state_dict() and use --arch, or save with torch.jit.save / torch.export.save."
        )
    code_modules = [_import_code(item) for item in code]
    try:
        obj = torch.load(
            str(path),
            weights_only=False,
            map_location="cpu",
            pickle_module=_pickle_with_fallback(code_modules),
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
        raise _not_a_model(path, f"it unpickles to a {type(obj).__name__}, not an nn.Module")
    obj.eval()
    return LoadedModel(path, "pickled_module", sha, obj, None)


def _unsafe_globals(path: Path) -> list[str]:
    import torch

    try:  # reads the pickle's opcodes without running them (zip format only)
        globals_ = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:
        return []
    return [g for g in globals_ if not g.startswith("torch.")]


def _pickle_with_fallback(code_modules: list[types.ModuleType]) -> types.ModuleType:
    """A `pickle` stand-in for torch.load: classes pickled from a module that is not importable
    under that name (often `__main__`, or a script run from another folder) are looked up in the
    --code modules by class name."""

    class Unpickler(pickle.Unpickler):
        def find_class(self, module_name, name):
            try:
                return super().find_class(module_name, name)
            except (ImportError, AttributeError):
                for module in code_modules:
                    if hasattr(module, name):
                        return getattr(module, name)
                raise

    shim = types.ModuleType("edgekit_pickle")
    shim.__dict__.update({k: getattr(pickle, k) for k in dir(pickle) if not k.startswith("__")})
    shim.Unpickler = Unpickler
    shim.load = lambda file, **kw: Unpickler(file, **kw).load()
    return shim


def _load_onnx(
    path: Path, sha: str, head: bytes, read_inputs: bool = True, checker: bool = True
) -> LoadedModel:
    import onnx

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
        raise _not_a_model(path, "its contents are not a model format edgekit knows")
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


# ---------------------------------------------------------------------------- arch and code


def _build_arch(arch: str):
    import torch

    target, sep, factory_name = arch.rpartition(":")
    if not sep or not target or not factory_name.isidentifier():
        raise EdgekitError(
            f"Cannot read --arch {arch!r}. Write it as `package.module:Factory` or "
            "`path/to/file.py:Factory`, where Factory builds the model with no arguments."
        )
    module = _import_code(target, flag="--arch")
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise EdgekitError(
            f"--arch {arch}: {target} has no class or function named {factory_name!r}. "
            f"Check the spelling; it must be defined at the top level of {target}."
        )
    try:
        model = factory()
    except Exception as exc:
        raise EdgekitError(
            f"--arch {arch}: calling {factory_name}() failed ({type(exc).__name__}: {exc}). "
            "The factory must build the model with no arguments; wrap it in a function that "
            "passes the settings the weights were trained with."
        ) from None
    if not isinstance(model, torch.nn.Module):
        raise EdgekitError(
            f"--arch {arch}: {factory_name}() returned a {type(model).__name__}, not a "
            "torch.nn.Module. Point --arch at a class or function that returns the model."
        )
    return model


def _import_code(target: str, flag: str = "--code") -> types.ModuleType:
    """Import a .py file path or a dotted module name; any failure becomes a clear error."""
    is_file = target.endswith(".py") or "/" in target or "\\" in target or Path(target).is_file()
    try:
        if is_file:
            return _import_file(Path(target), flag)
        if os.getcwd() not in sys.path:  # the `edgekit` console script leaves it out
            sys.path.insert(0, os.getcwd())
        return importlib.import_module(target)
    except EdgekitError:
        raise
    except Exception as exc:
        what = "file" if is_file else "module"
        raise EdgekitError(
            f"{flag} {target}: importing the {what} failed ({type(exc).__name__}: {exc}). "
            "Check the path or module name, and that the packages it imports are installed "
            "(a module name must be importable from the current directory or installed)."
        ) from None


def _import_file(file: Path, flag: str) -> types.ModuleType:
    file = file.resolve()
    if not file.is_file():
        raise EdgekitError(f"{flag} {file}: there is no such file. Give the path of a .py file.")
    if file.suffix != ".py":
        raise EdgekitError(
            f"{flag} {file}: this is not a Python source file (.py). {flag} takes the .py file "
            "(or the module path) that defines the model's class; the weights themselves are the "
            "model file argument."
        )
    # Import under the file's own name (how a pickle made from `import mymodels` refers to it),
    # unless that name is taken; sibling imports work because its folder joins sys.path.
    name = file.stem if file.stem.isidentifier() else "edgekit_code"
    existing = sys.modules.get(name)
    if existing is not None:
        if Path(getattr(existing, "__file__", "") or "").resolve() == file:
            return existing
        name = f"edgekit_code_{abs(hash(str(file)))}"
    if str(file.parent) not in sys.path:
        sys.path.insert(0, str(file.parent))
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


# ---------------------------------------------------------------------------- errors


def check_model_file(path: Path) -> None:
    """The model file exists and is a non-empty file; else a clear error."""
    if not path.exists():
        raise EdgekitError(f"The model file {path} does not exist. Check the path and try again.")
    if path.is_dir():
        raise EdgekitError(
            f"{path} is a folder, not a model file. Pass the model file itself, e.g. model.pt, "
            "model.pt2 or model.onnx."
        )
    if path.stat().st_size == 0:
        raise EdgekitError(
            f"The model file {path} is empty (0 bytes); saving or copying it was probably "
            "interrupted. Save or copy the model again."
        )


def _zip_names(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise EdgekitError(
            f"{path} starts like a zip archive (the container of torch.save, torch.jit.save and "
            f".pt2 files) but cannot be read ({exc}): it is probably truncated or corrupt, e.g. "
            "an interrupted download or copy. Copy or save the model again."
        ) from None


def _corrupt(path: Path, kind: str, exc: Exception) -> EdgekitError:
    detail = one_line(str(exc), 300)
    return EdgekitError(
        f"{path} looks like a {kind} but loading it failed ({type(exc).__name__}: {detail}). "
        "The file may be truncated or corrupt, or saved by an incompatible torch version; "
        "save or copy it again."
    )


def _not_a_model(path: Path, why: str) -> EdgekitError:
    return EdgekitError(f"{path} is not a model file edgekit can read: {why}. {_SAVE_HINT}")


def _preview(items: Sequence[str], limit: int = 4) -> str:
    items = list(items)
    shown = ", ".join(items[:limit])
    more = f", … {len(items) - limit} more" if len(items) > limit else ""
    return f"[{shown}{more}]"
