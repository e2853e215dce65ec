"""A Hugging Face causal-LM folder as users have it (save_pretrained): what it holds, checked.

Reads config.json, the safetensors headers (parameter count, no tensor read) and finds
tokenizer.json. Torch-free: nothing here loads weights.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from edgekit.errors import EdgekitError
from edgekit.textsafe import plain

# A safetensors file starts with the length of its JSON header (u64, little endian). Real headers
# are kilobytes to a few MB; a larger length means the file is not safetensors.
_MAX_HEADER = 100_000_000


@dataclass(frozen=True)
class LMFolder:
    path: Path
    architecture: str  # e.g. "LlamaForCausalLM"
    model_type: str  # config["model_type"], e.g. "llama"
    vocab_size: int
    context_length: int  # max_position_embeddings
    num_layers: int
    hidden_size: int
    parameters: int | None  # counted from the safetensors headers; None if unknown
    tokenizer_file: Path  # tokenizer.json
    chat_template: str | None


def is_lm_folder(path) -> bool:
    """True for a folder whose config.json names a *ForCausalLM architecture."""
    try:
        config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(_causal_architectures(config))


def read_lm_folder(path) -> LMFolder:
    """The folder's LMFolder, or EdgekitError saying what is missing and what to do."""
    folder = Path(path)
    if not folder.is_dir():
        raise EdgekitError(
            f"{folder} is not a folder. A language model is given as the folder a Hugging Face "
            "model is saved in (`model.save_pretrained(folder)` and `tokenizer.save_pretrained"
            "(folder)`): config.json, *.safetensors and tokenizer.json."
        )
    config = _read_config(folder)
    architectures = _causal_architectures(config)
    if not architectures:
        named = config.get("architectures")
        what = (
            f"names the architecture {plain(named)}"
            if named
            else "names no architecture (no `architectures` list)"
        )
        raise EdgekitError(
            f"{folder}/config.json {what}, which is not a causal language model (a "
            "`...ForCausalLM` class). edgekit's language-model path takes text generators such "
            "as LlamaForCausalLM or Qwen2ForCausalLM; for another kind of model export it to a "
            ".pt/.pt2 or ONNX file and run `edgekit optimize` on that file."
        )
    tokenizer_file = folder / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise EdgekitError(
            f"{folder} has no tokenizer.json, so its text cannot be tokenized on the device. "
            "Save the model's fast tokenizer into the folder: "
            "`AutoTokenizer.from_pretrained(...).save_pretrained(folder)` (edgekit downloads "
            "nothing)."
        )
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        pickled = sorted(p.name for p in (*folder.glob("*.bin"), *folder.glob("*.pt")))
        found = (
            f"It holds {plain(', '.join(pickled))}, a pickle, which edgekit does not load "
            "(unpickling can run any code). "
            if pickled
            else ""
        )
        raise EdgekitError(
            f"{folder} has no *.safetensors weights. {found}Save the model with "
            "`model.save_pretrained(folder, safe_serialization=True)`."
        )
    template = chat_template(folder)
    return LMFolder(
        path=folder,
        architecture=architectures[0],
        model_type=str(config.get("model_type", "")),
        vocab_size=_int_field(folder, config, "vocab_size"),
        context_length=_int_field(
            folder, config, "max_position_embeddings", "n_positions", "max_sequence_length"
        ),
        num_layers=_int_field(folder, config, "num_hidden_layers", "n_layer", "num_layers"),
        hidden_size=_int_field(folder, config, "hidden_size", "n_embd", "d_model"),
        parameters=count_parameters(weights),
        tokenizer_file=tokenizer_file,
        chat_template=template,
    )


def count_parameters(files: list[Path]) -> int:
    """The number of weights in safetensors files, from their headers (tensors are not read).
    A tensor stored in two shards counts once."""
    shapes: dict[str, list[int]] = {}
    for file in files:
        for name, entry in _safetensors_header(file).items():
            if name != "__metadata__":
                shapes[name] = entry["shape"]
    return sum(math.prod(shape) for shape in shapes.values())


def _safetensors_header(file: Path) -> dict:
    try:
        with open(file, "rb") as f:
            head = f.read(8)
            (length,) = struct.unpack("<Q", head) if len(head) == 8 else (None,)
            if length is None or length > _MAX_HEADER:
                raise ValueError("no safetensors header length")
            header = json.loads(f.read(length).decode("utf-8"))
        if not isinstance(header, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("shape"), list)
            for k, v in header.items()
            if k != "__metadata__"
        ):
            raise ValueError("header is not a table of tensors")
    except (OSError, ValueError, struct.error) as e:
        raise EdgekitError(
            f"{file} is not a readable safetensors file ({plain(e)}). Re-save the model with "
            "`model.save_pretrained(folder, safe_serialization=True)`."
        ) from None
    return header


def _read_config(folder: Path) -> dict:
    file = folder / "config.json"
    if not file.is_file():
        raise EdgekitError(
            f"{folder} has no config.json, so it is not a Hugging Face model folder. Save the "
            "model with `model.save_pretrained(folder)`, which writes config.json beside the "
            "weights; a .pt/.pt2 file is given with `--arch` instead."
        )
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise EdgekitError(
            f"{file} cannot be read as JSON ({plain(e)}). Re-save the model with "
            "`model.save_pretrained(folder)`."
        ) from None
    if not isinstance(config, dict):
        raise EdgekitError(
            f"{file} holds no JSON object. Re-save the model with `model.save_pretrained(folder)`."
        )
    return config


def _causal_architectures(config) -> list[str]:
    names = config.get("architectures") if isinstance(config, dict) else None
    if not isinstance(names, list):
        return []
    return [n for n in names if isinstance(n, str) and n.endswith("ForCausalLM")]


def _int_field(folder: Path, config: dict, *keys: str) -> int:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    raise EdgekitError(
        f"{folder}/config.json has no positive integer `{keys[0]}`, which a causal language "
        "model's config needs. Re-save the model with `model.save_pretrained(folder)`."
    )


def chat_template(folder: Path) -> str | None:
    """tokenizer_config.json's chat_template, or chat_template.jinja (transformers 5); None
    when the folder has none."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    template = config.get("chat_template") if isinstance(config, dict) else None
    return template if isinstance(template, str) and template.strip() else None
