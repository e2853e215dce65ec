"""What loading a torch file could run, found by reading its pickle opcodes, never by running them.

torch.export.load unpickles parts of a .pt2 archive with weights_only=False (sample inputs after
a failed weights-only load, weights and constants marked use_pickle, opaque objects) and loads
AOTInductor shared libraries: opening a file can run code from it. Untrusted, every entry that
torch may unpickle is checked against torch's weights-only allow-list before anything is loaded.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickletools
import re
import tarfile
import zipfile
from pathlib import Path

from edgekit.errors import EdgekitError
from edgekit.model.formats import ZIP_MAGIC, preview
from edgekit.textsafe import plain

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


def refuse_unsafe_pt2(path: Path) -> None:
    problems = _pt2_problems(path)
    if problems:
        raise EdgekitError(
            f"{path} is a torch.export archive (.pt2) that holds more than tensors and plain data: "
            f"{preview([plain(p) for p in problems], 3)}. Loading it would unpickle those objects, "
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
    if data.startswith(ZIP_MAGIC):  # torch.save's zip format: the pickles are its .pkl files
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


def unsafe_globals(path: Path) -> list[str]:
    """The classes and functions outside torch that a zip-format torch.save file's pickle names
    (read from its opcodes by torch, not run); [] when torch cannot tell."""
    import torch

    try:  # reads the pickle's opcodes without running them (zip format only)
        globals_ = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:
        return []
    return [g for g in globals_ if not g.startswith("torch.")]


@contextlib.contextmanager
def forced_weights_only(force: bool):
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
