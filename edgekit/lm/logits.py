"""An LM variant folder run with plain onnxruntime: the logits of a token sequence, greedy tokens.

The folder is onnxruntime-genai's layout; genai_config.json names the model file and its inputs
and outputs (input_ids, attention_mask, optional position_ids, past_key_values.{i}.key|value ->
logits, present.{i}.key|value). Drift needs the full next-token distribution at every position,
which onnxruntime-genai's Generator does not hand out for a whole prompt: so this runs the same
model.onnx directly. Torch-free.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.textsafe import plain

_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class LogitsModel:
    def __init__(self, variant_dir, threads: int = 2):
        import onnxruntime as ort

        self.path = Path(variant_dir)
        decoder, model = _read_genai_config(self.path)
        try:
            inputs, outputs = decoder["inputs"], decoder["outputs"]
            self.num_layers = int(decoder["num_hidden_layers"])
            self._kv_heads = int(decoder["num_key_value_heads"])
            self._head_size = int(decoder["head_size"])
            self._input_ids = inputs["input_ids"]
            self._attention_mask = inputs["attention_mask"]
            self._position_ids = inputs.get("position_ids")
            self._past = [
                (inputs["past_key_names"] % i, inputs["past_value_names"] % i)
                for i in range(self.num_layers)
            ]
            self._logits = outputs["logits"]
            self._present = [
                (outputs["present_key_names"] % i, outputs["present_value_names"] % i)
                for i in range(self.num_layers)
            ]
            file = self.path / decoder["filename"]
        except (KeyError, TypeError, ValueError) as e:
            raise EdgekitError(
                f"{self.path}/genai_config.json lacks a decoder setting ({plain(e)}). Rebuild "
                "the variant folder with `edgekit optimize` or onnxruntime-genai's model builder."
            ) from None
        self.context_length = model.get("context_length")
        self.vocab_size = model.get("vocab_size")

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            model = _every_position(file, self._logits)
            if model is not None:  # its weights stay in the folder's external-data files
                folder = "session.model_external_initializers_file_folder_path"
                options.add_session_config_entry(folder, str(file.parent))
            self._session = ort.InferenceSession(
                model or str(file), options, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime (or onnx) raises its own types for a bad file
            raise EdgekitError(
                f"{file} cannot be loaded by onnxruntime ({plain(e)}). Rebuild the variant "
                "folder with `edgekit optimize`."
            ) from None
        types = {i.name: i.type for i in self._session.get_inputs()}
        first = self._past[0][0] if self._past else None
        self._kv_dtype = _NUMPY_TYPES.get(types.get(first))
        if first is not None and self._kv_dtype is None:
            raise EdgekitError(
                f"{file}: the KV-cache input {plain(first)} is {plain(types.get(first))}, not "
                "float32 or float16. Rebuild the variant folder with `edgekit optimize`."
            )

    def sequence_logits(self, ids: np.ndarray) -> np.ndarray:
        """(T,) token ids -> (T, vocab) float32: one forward pass from an empty KV cache."""
        ids = self._check(ids, 0)
        logits, _ = self._forward(ids, self._empty_cache(), 0)
        return logits

    def greedy(self, ids: np.ndarray, new_tokens: int) -> list[int]:
        """The next `new_tokens` argmax tokens after `ids`, one decode step each with the KV
        cache. It does not stop at the end-of-sequence token: always `new_tokens` tokens."""
        ids = self._check(ids, new_tokens)
        logits, cache = self._forward(ids, self._empty_cache(), 0)
        tokens = [int(np.argmax(logits[-1]))]
        past = len(ids)
        while len(tokens) < new_tokens:
            logits, cache = self._forward(np.array([tokens[-1]], dtype=np.int64), cache, past)
            past += 1
            tokens.append(int(np.argmax(logits[-1])))
        return tokens[:new_tokens]

    def _check(self, ids, new_tokens: int) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if not len(ids):
            raise EdgekitError("An empty prompt has no next token: give at least one token.")
        if self.vocab_size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise EdgekitError(
                f"Token ids must lie in 0..{self.vocab_size - 1} (the vocabulary of "
                f"{self.path}); got {int(ids.min())}..{int(ids.max())}: was the text tokenized "
                "with this model's tokenizer?"
            )
        if self.context_length and len(ids) + max(new_tokens - 1, 0) > self.context_length:
            raise EdgekitError(
                f"{len(ids)} prompt tokens + {new_tokens} new tokens exceed the context length "
                f"of {self.path} ({self.context_length} tokens). Give a shorter prompt or ask "
                "for fewer tokens."
            )
        return ids

    def _empty_cache(self) -> list[np.ndarray]:
        empty = np.zeros((1, self._kv_heads, 0, self._head_size), dtype=self._kv_dtype)
        return [empty for _ in range(2 * self.num_layers)]

    def _forward(self, ids: np.ndarray, cache: list[np.ndarray], past: int):
        """Logits (T, vocab) float32 of `ids` after `past` cached tokens, and the new cache."""
        total = past + len(ids)
        feeds = {
            self._input_ids: ids[None, :],
            self._attention_mask: np.ones((1, total), dtype=np.int64),
        }
        if self._position_ids:
            feeds[self._position_ids] = np.arange(past, total, dtype=np.int64)[None, :]
        for (key, value), k, v in zip(self._past, cache[0::2], cache[1::2], strict=True):
            feeds[key], feeds[value] = k, v
        names = [self._logits] + [name for pair in self._present for name in pair]
        logits, *present = self._session.run(names, feeds)
        return logits[0].astype(np.float32, copy=False), present


def _every_position(file: Path, logits: str) -> bytes | None:
    """onnxruntime-genai's builder with prune_lm_head computes the logits of the last position
    only (Gather(index -1) + Unsqueeze before the LM head): generation reads nothing else. Drift
    needs every position: the same graph without those two nodes, as bytes (the weights are not
    read here). None when the graph computes every position already."""
    import onnx

    model = onnx.load(str(file), load_external_data=False)
    made_by = {out: node for node in model.graph.node for out in node.output}
    head = made_by.get(logits)
    unsqueeze = made_by.get(head.input[0]) if head is not None and head.input else None
    if unsqueeze is None or unsqueeze.op_type != "Unsqueeze":
        return None
    gather = made_by.get(unsqueeze.input[0])
    axis = {a.name: a.i for a in gather.attribute}.get("axis", 0) if gather is not None else None
    if gather is None or gather.op_type != "Gather" or axis != 1:  # [B, S, H] -> [B, H]
        return None
    head.input[0] = gather.input[0]
    model.graph.node.remove(unsqueeze)
    model.graph.node.remove(gather)
    # their index constants, unless used elsewhere (onnxruntime warns of unused ones)
    used = {name for node in model.graph.node for name in node.input}
    unused = {*gather.input[1:], *unsqueeze.input[1:]} - used
    for init in [i for i in model.graph.initializer if i.name in unused]:
        model.graph.initializer.remove(init)
    for node in [n for n in model.graph.node if n.op_type == "Constant" and n.output[0] in unused]:
        model.graph.node.remove(node)
    for output in model.graph.output:
        if output.name == logits and len(output.type.tensor_type.shape.dim) == 3:
            output.type.tensor_type.shape.dim[1].dim_param = "sequence_length"
    return model.SerializeToString()


def _read_genai_config(folder: Path) -> tuple[dict, dict]:
    file = folder / "genai_config.json"
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
        model = config["model"]
        decoder = model["decoder"]
        if not isinstance(decoder, dict):
            raise TypeError("model.decoder is not an object")
    except FileNotFoundError:
        raise EdgekitError(
            f"{folder} has no genai_config.json, so it is not an LM variant folder (the folders "
            "`edgekit optimize` makes from a language model hold genai_config.json and "
            "model.onnx)."
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise EdgekitError(
            f"{file} cannot be read ({plain(e)}). Rebuild the variant folder with "
            "`edgekit optimize`."
        ) from None
    return decoder, model
