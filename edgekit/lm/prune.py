"""Depth pruning of a causal LM: drop the decoder layers whose removal raises perplexity on the
held-out text least (one at a time, greedily), as a new Hugging Face folder the exporters take.
Host side: torch and transformers measure the perplexity; the weights are rewritten with
safetensors alone (tensors renamed, nothing recomputed)."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

from edgekit.errors import EdgekitError

_LAYER = re.compile(r"^(.*\.layers\.)(\d+)(\..*)$")
# config.json lists that hold one entry per layer
_PER_LAYER_KEYS = ("layer_types",)


def drop_layer(src: Path, dst: Path, layer: int) -> None:
    """`src` without decoder layer `layer` (later layers renumbered) as the folder `dst`."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    src, dst = Path(src), Path(dst)
    config = json.loads((src / "config.json").read_text())
    layers = config["num_hidden_layers"]
    if not 0 <= layer < layers or layers < 2:
        raise EdgekitError(f"{src}: cannot drop layer {layer} of {layers}.")
    dst.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.glob("*.safetensors")):
        tensors = {}
        with safe_open(str(path), "np") as f:
            for key in f.keys():  # noqa: SIM118  safe_open is not a dict
                match = _LAYER.match(key)
                if match and int(match[2]) == layer:
                    continue
                if match and int(match[2]) > layer:
                    key_out = f"{match[1]}{int(match[2]) - 1}{match[3]}"
                else:
                    key_out = key
                tensors[key_out] = f.get_tensor(key)
        save_file(tensors, str(dst / path.name), metadata={"format": "pt"})
    index = src / "model.safetensors.index.json"
    if index.is_file():  # a sharded checkpoint: its index names the renamed tensors too
        data = json.loads(index.read_text())
        mapping = {}
        for key, shard in data["weight_map"].items():
            match = _LAYER.match(key)
            if match and int(match[2]) == layer:
                continue
            if match and int(match[2]) > layer:
                key = f"{match[1]}{int(match[2]) - 1}{match[3]}"
            mapping[key] = shard
        data["weight_map"] = mapping
        (dst / index.name).write_text(json.dumps(data, indent=2))
    config["num_hidden_layers"] = layers - 1
    for key in _PER_LAYER_KEYS:
        if isinstance(config.get(key), list) and len(config[key]) == layers:
            config[key] = config[key][:layer] + config[key][layer + 1 :]
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    for path in src.iterdir():
        if path.is_file() and path.suffix != ".safetensors" and not (dst / path.name).exists():
            shutil.copyfile(path, dst / path.name)


def perplexity_torch(folder: Path, windows) -> float:
    """Perplexity of the transformers model in `folder` on token windows (host side)."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    nll, count = 0.0, 0
    with torch.no_grad():
        for w in windows:
            ids = torch.as_tensor(np.asarray(w, dtype=np.int64))[None]
            logp = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
            nll -= logp.gather(1, ids[0, 1:, None]).sum().item()
            count += ids.shape[1] - 1
    return float(np.exp(nll / count))


def prune_depth(src: Path, dst: Path, drop: int, windows, on_progress=None) -> list[dict]:
    """Drop `drop` layers from `src` greedily into `dst`: each round removes the layer whose
    removal gives the lowest perplexity on `windows`. Returns the rounds as
    [{"dropped": original layer index, "perplexity": after, "tried": {layer: perplexity}}]."""
    src = Path(src)
    layers = json.loads((src / "config.json").read_text())["num_hidden_layers"]
    if not 1 <= drop < layers:
        raise EdgekitError(
            f"--prune depth:{drop}: the model has {layers} layers; drop from 1 to {layers - 1}."
        )
    rounds, original = [], list(range(layers))  # original index of each remaining layer
    with tempfile.TemporaryDirectory(prefix=".edgekit-prune-", dir=Path(dst).parent) as work:
        current = src
        for r in range(drop):
            tried, best = {}, None
            for i in range(len(original)):
                if on_progress:
                    on_progress(f"round {r + 1}: without layer {original[i]}")
                candidate = Path(work) / f"r{r}-l{i}"
                drop_layer(current, candidate, i)
                tried[i] = perplexity_torch(candidate, windows)
                if best is None or tried[i] < tried[best]:  # keep one candidate on disk
                    if best is not None:
                        shutil.rmtree(Path(work) / f"r{r}-l{best}")
                    best = i
                else:
                    shutil.rmtree(candidate)
            rounds.append(
                {
                    "dropped": original[best],
                    "perplexity": tried[best],
                    "tried": {str(original[i]): p for i, p in tried.items()},
                }
            )
            if current != src:
                shutil.rmtree(current)
            current = Path(work) / f"r{r}-l{best}"
            del original[best]
        shutil.copytree(current, dst)
    return rounds
