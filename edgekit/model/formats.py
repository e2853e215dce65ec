"""Which kind of model file this is, from its bytes, never its name: the checks every loader
makes first, and the error for a file that is no model edgekit reads."""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

from edgekit.errors import EdgekitError

ZIP_MAGIC = b"PK\x03\x04"
_SAVE_HINT = (
    "edgekit reads TorchScript (torch.jit.save), torch.export programs (torch.export.save), "
    "torch.save files (a state_dict with --arch, or a whole module with --trust-pickle) and ONNX."
)


def model_format(path: Path) -> str:
    """The kind of model file: exported_program (.pt2), torchscript, torch_save (zip or legacy
    pickle) or onnx (anything else: the ONNX loader decides whether it is one)."""
    head = read_head(path)
    if head.startswith(ZIP_MAGIC):
        names = _zip_names(path)
        if any(n.endswith("archive_format") for n in names):
            return "exported_program"
        if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
            return "torchscript"
        if any(n.endswith("data.pkl") for n in names):
            return "torch_save"
        raise not_a_model(path, f"it is a zip archive of other files ({preview(names)})")
    if _is_pickle(head):  # torch.save's legacy (non-zip) format
        return "torch_save"
    return "onnx"


def read_head(path: Path) -> bytes:
    """The first 16 bytes of a model file that exists and is not empty; else a clear error."""
    check_model_file(path)
    with open(path, "rb") as handle:
        return handle.read(16)


def is_torch_file(head: bytes) -> bool:
    return head.startswith(ZIP_MAGIC) or _is_pickle(head)


def _is_pickle(head: bytes) -> bool:
    return head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")


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


def not_a_model(path: Path, why: str) -> EdgekitError:
    return EdgekitError(f"{path} is not a model file edgekit can read: {why}. {_SAVE_HINT}")


def preview(items: Sequence[str], limit: int = 4) -> str:
    items = list(items)
    shown = ", ".join(items[:limit])
    more = f", … {len(items) - limit} more" if len(items) > limit else ""
    return f"[{shown}{more}]"
