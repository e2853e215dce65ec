"""A language model's tokenizer from its folder's tokenizer.json (the `tokenizers` library).

Torch-free and transformers-free: what the device needs to turn text into token ids and back.
eos_token_id is tokenizer_config.json's eos_token (as transformers reads it), or else the
generation_config.json / config.json id; bos_token_id is the token the tokenizer itself puts before
every text (None for tokenizers that add none, such as GPT-2's or Qwen's).
"""

from __future__ import annotations

import json
from pathlib import Path

from edgekit.errors import EdgekitError
from edgekit.textsafe import plain


class Tokenizer:
    def __init__(self, backend, eos_token_id: int | None, bos_token_id: int | None):
        self._backend = backend
        self.eos_token_id = eos_token_id
        self.bos_token_id = bos_token_id

    @classmethod
    def from_folder(cls, path) -> Tokenizer:
        """The tokenizer of a Hugging Face folder or an LM variant folder (both hold
        tokenizer.json)."""
        from tokenizers import Tokenizer as Backend

        folder = Path(path)
        file = folder / "tokenizer.json"
        try:
            backend = Backend.from_file(str(file))
        except Exception as e:  # the library raises its own Exception type for every failure
            raise EdgekitError(
                f"{file} cannot be read as a tokenizer ({plain(e)}). Save the model's fast "
                "tokenizer into the folder: `AutoTokenizer.from_pretrained(...)"
                ".save_pretrained(folder)`."
            ) from None
        settings = _json(folder / "tokenizer_config.json")

        def named(name: str) -> int | None:
            token = settings.get(f"{name}_token")
            if isinstance(token, dict):  # {"content": "<s>", ...} in older files
                token = token.get("content")
            return backend.token_to_id(token) if isinstance(token, str) else None

        eos = named("eos")
        if eos is None:
            ids = {**_json(folder / "config.json"), **_json(folder / "generation_config.json")}
            value = ids.get("eos_token_id")
            if isinstance(value, list):  # several end tokens: the first is the tokenizer's
                value = value[0] if value else None
            eos = value if isinstance(value, int) and not isinstance(value, bool) else None
        # bos: the token the tokenizer puts before a text itself (Llama's <s>), if any
        bare, full = backend.encode("a", add_special_tokens=False).ids, backend.encode("a").ids
        bos = full[0] if full[1 : 1 + len(bare)] == bare else None
        return cls(backend, eos, bos)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, with the special tokens the tokenizer adds itself (e.g. a bos)."""
        return self._backend.encode(text).ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self._backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    @property
    def vocab_size(self) -> int:
        return self._backend.get_vocab_size()


def _json(file: Path) -> dict:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
