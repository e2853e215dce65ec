"""A Hugging Face causal-LM folder → an LM variant folder: what onnxruntime-genai loads
(genai_config.json, model.onnx + model.onnx.data, the tokenizer files), with a KV cache for
prefill and decode. Host side: torch and transformers are imported only here, and lazily.

Two exporters make the same kind of folder:
- "builder": onnxruntime-genai's own model builder, run as a subprocess (offline, its log kept and
  shown only when it fails). It fuses attention into GroupQueryAttention and quantizes MatMuls to
  MatMulNBits (int4/int8 weight-only) itself. It knows BUILDER_ARCHITECTURES.
- "torch": for an architecture the builder does not know, torch.onnx export of the transformers
  model with past_key_values as inputs and present.* as outputs (named as the builder names
  them), and a genai_config.json written here, so the same runtime loads it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

from edgekit.errors import EdgekitError

# The *ForCausalLM architectures onnxruntime-genai 0.18's builder dispatches on (create_model in
# onnxruntime_genai/models/builder.py; tests/test_lm_export.py checks the installed builder).
BUILDER_ARCHITECTURES = (
    "Ernie4_5ForCausalLM",
    "GemmaForCausalLM",
    "Gemma2ForCausalLM",
    "Gemma3ForCausalLM",
    "GptOssForCausalLM",
    "GraniteForCausalLM",
    "GraniteMoeHybridForCausalLM",
    "HunYuanDenseV1ForCausalLM",
    "InternLM2ForCausalLM",
    "Lfm2ForCausalLM",
    "Lfm2MoeForCausalLM",
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "NemotronForCausalLM",
    "OlmoForCausalLM",
    "PhiForCausalLM",
    "Phi3ForCausalLM",
    "Phi3SmallForCausalLM",
    "PhiMoEForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "SmolLM3ForCausalLM",
)
EXPORTERS = ("builder", "torch")
BUILDER_TIMEOUT_S = 3600  # a 2B model takes minutes here; a hung builder must not hang edgekit
# The tokenizer and chat files onnxruntime-genai reads beside the model (copied when present).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
)


def exporter_for(folder) -> str:
    """ "builder" or "torch" for a causal-LM folder (an edgekit.lm.folder.LMFolder)."""
    if folder.architecture not in BUILDER_ARCHITECTURES:
        return "torch"
    if folder.vocab_size == folder.hidden_size:
        # onnxruntime-genai 0.18's builder makes wrong logits when the embedding table is
        # square (seen on Llama: hidden 512 with vocabulary 512 differed from transformers at
        # every position; 256/512 and 512/1024 matched exactly); torch.onnx gets it right
        return "torch"
    return "builder"


def exporter_reason(folder) -> str:
    """Why `exporter_for` chose what it chose, for the report."""
    if exporter_for(folder) == "builder":
        return "onnxruntime-genai's model builder (GroupQueryAttention, MatMulNBits)"
    if folder.architecture not in BUILDER_ARCHITECTURES:
        return "torch.onnx with past_key_values (the builder does not know this architecture)"
    return (
        "torch.onnx with past_key_values (the builder makes wrong logits for a vocabulary as "
        "large as the hidden size)"
    )


def build_with_builder(src: Path, jobs: dict, threads: int | None = None) -> dict:
    """onnxruntime-genai's model builder on `src` (a save_pretrained folder), one subprocess for
    all of `jobs` ({name: (out_dir, precision, extra_options)}, precision fp32 | int8 | int4).
    Offline: nothing is fetched. Returns {name: None (built) | EdgekitError (why not)}; the
    builder's log is kept only in the error."""
    try:
        import onnx_ir  # noqa: F401  the builder needs it, and its wheel does not pull it in
        import onnxruntime_genai  # noqa: F401
    except ImportError as exc:
        raise EdgekitError(
            f"Exporting a language model needs onnxruntime-genai and onnx-ir, which cannot be "
            f"imported here ({exc}). Install them with: pip install 'edgekit[lm]'"
        ) from None
    with tempfile.TemporaryDirectory(prefix="edgekit-builder-") as work:
        work = Path(work)
        specs = []
        for i, (name, (out_dir, precision, options)) in enumerate(jobs.items()):
            argv = [
                "-i", str(Path(src).resolve()), "-o", str(Path(out_dir).resolve()),
                "-p", precision, "-e", "cpu", "-c", str(work / f"cache-{i}"),
            ]  # fmt: skip
            if options:
                argv += ["--extra_options", *(f"{k}={v}" for k, v in options.items())]
            specs.append(
                {
                    "name": name,
                    "argv": argv,
                    "log": str(work / f"{i}.log"),
                    "done": str(work / f"{i}.done"),
                }
            )
        (work / "jobs.json").write_text(json.dumps(specs))
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            **({"OMP_NUM_THREADS": str(threads)} if threads else {}),
        }
        try:
            done = subprocess.run(
                [sys.executable, "-m", "edgekit.lm.builder_run", str(work / "jobs.json")],
                cwd=work,  # anything it writes beside itself goes away with `work`
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=BUILDER_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            raise EdgekitError(
                f"onnxruntime-genai's model builder did not finish within {BUILDER_TIMEOUT_S} s "
                f"for {src}. Check that the machine has memory to spare for the model."
            ) from None
        results = {}
        for spec, (_, precision, _) in zip(specs, jobs.values(), strict=True):
            marker = Path(spec["done"])
            if marker.is_file() and marker.read_text() == "ok":
                results[spec["name"]] = None
                continue
            log = (
                Path(spec["log"]).read_text(errors="replace") if Path(spec["log"]).is_file() else ""
            )
            lines = (log + done.stdout + done.stderr).strip().splitlines()
            tail = "\n".join(line[-300:] for line in lines[-15:])
            results[spec["name"]] = EdgekitError(
                f"onnxruntime-genai's model builder failed on {src} (-p {precision}, builder "
                f"process exit {done.returncode}). The end of its log:\n{tail}"
            )
    return results


def export_with_torch(
    src: Path, out_dir: Path, architecture: str, threads: int | None = None
) -> None:
    """fp32 ONNX with a KV cache through torch.onnx, and the genai_config.json that tells
    onnxruntime-genai its inputs and outputs."""
    model = _load_transformers(src, architecture)
    if threads:
        import torch

        torch.set_num_threads(threads)
    config = model.config
    layers = config.num_hidden_layers
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_size = getattr(config, "head_dim", None) or config.hidden_size // heads
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        _torch_onnx_export(model, out_dir / "model.onnx", layers, kv_heads, head_size)
    except Exception as exc:
        raise EdgekitError(
            f"{src}: torch.onnx could not export {architecture} with a KV cache ({exc}). "
            f"onnxruntime-genai's model builder supports {', '.join(BUILDER_ARCHITECTURES)}; "
            "re-save the model as one of those if it is one of them under another name."
        ) from None
    _copy_tokenizer(src, out_dir)
    genai = {
        "model": {
            "bos_token_id": config.bos_token_id,
            "eos_token_id": config.eos_token_id,
            "pad_token_id": config.pad_token_id
            if config.pad_token_id is not None
            else config.eos_token_id,
            "context_length": config.max_position_embeddings,
            "vocab_size": config.vocab_size,
            # onnxruntime-genai knows a fixed list of types; "llama" is its plain decoder-only
            # one: the graph itself carries the architecture
            "type": "llama",
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": "model.onnx",
                "head_size": head_size,
                "hidden_size": config.hidden_size,
                "num_attention_heads": heads,
                "num_hidden_layers": layers,
                "num_key_value_heads": kv_heads,
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "position_ids": "position_ids",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
            },
        },
        "search": {
            "do_sample": False,
            "max_length": config.max_position_embeddings,
            "min_length": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            # past and present are separate tensors: only GroupQueryAttention shares one buffer
            "past_present_share_buffer": False,
            "repetition_penalty": 1.0,
            "temperature": 1.0,
            "top_k": 50,
            "top_p": 1.0,
        },
    }
    (out_dir / "genai_config.json").write_text(json.dumps(genai, indent=2) + "\n")


def unknown_architecture(src: Path, architecture: str):
    """The error for an architecture neither exporter knows."""
    import transformers

    raise EdgekitError(
        f"{src}: the architecture {architecture} is known neither to onnxruntime-genai's "
        f"model builder (it supports {', '.join(BUILDER_ARCHITECTURES)}) nor to transformers "
        f"{transformers.__version__} (for edgekit's torch.onnx export), so edgekit cannot "
        "export it. Save the model as one of those architectures, or upgrade transformers "
        "if a newer one has it."
    )


def _load_transformers(src: Path, architecture: str):
    try:
        import transformers
    except ImportError as exc:
        raise EdgekitError(
            f"Exporting {architecture} needs transformers and torch on this machine ({exc}). "
            "Install them with: pip install 'edgekit[lm]' (and a CPU torch first, see "
            "DEVELOPERS.md)."
        ) from None
    cls = getattr(transformers, architecture, None)
    if cls is None:
        unknown_architecture(src, architecture)
    try:  # eager attention: plain MatMul/Softmax, which every exporter and runtime handles
        return cls.from_pretrained(src, attn_implementation="eager").eval()
    except Exception as exc:
        raise EdgekitError(
            f"{src}: transformers could not load it as {architecture} ({exc}). Check that the "
            "folder is what save_pretrained wrote."
        ) from None


def _torch_onnx_export(model, path: Path, layers: int, kv_heads: int, head_size: int) -> None:
    import torch
    from transformers import DynamicCache

    class WithCache(torch.nn.Module):
        """Flat tensors in and out: the KV cache as past_key_values.{i}.key/value."""

        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def forward(self, input_ids, attention_mask, position_ids, *past):
            cache = DynamicCache(
                [(past[2 * i], past[2 * i + 1]) for i in range(layers)], config=self.lm.config
            )
            out = self.lm(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=True,
            )
            present = [
                t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)
            ]
            return (out.logits, *present)

    # Traced at lengths other than 0 and 1, so no axis is taken for a constant.
    batch, past_len, seq = 1, 3, 4
    ids = torch.zeros((batch, seq), dtype=torch.int64)
    mask = torch.ones((batch, past_len + seq), dtype=torch.int64)
    positions = torch.arange(past_len, past_len + seq).unsqueeze(0)
    past = [torch.zeros(batch, kv_heads, past_len, head_size) for _ in range(2 * layers)]
    kinds = [(i, kind) for i in range(layers) for kind in ("key", "value")]
    past_names = [f"past_key_values.{i}.{kind}" for i, kind in kinds]
    present_names = [f"present.{i}.{kind}" for i, kind in kinds]
    axes = {
        "input_ids": {0: "batch_size", 1: "sequence_length"},
        "attention_mask": {0: "batch_size", 1: "total_sequence_length"},
        "position_ids": {0: "batch_size", 1: "sequence_length"},
        "logits": {0: "batch_size", 1: "sequence_length"},
        **{n: {0: "batch_size", 2: "past_sequence_length"} for n in past_names},
        **{n: {0: "batch_size", 2: "total_sequence_length"} for n in present_names},
    }
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python branches it froze
        torch.onnx.export(
            WithCache(model),
            (ids, mask, positions, *past),
            str(path),
            input_names=["input_ids", "attention_mask", "position_ids", *past_names],
            output_names=["logits", *present_names],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,  # the TorchScript exporter traces the cache code as it runs
        )


def _copy_tokenizer(src: Path, out_dir: Path) -> None:
    for name in TOKENIZER_FILES:
        if (Path(src) / name).is_file():
            shutil.copyfile(Path(src) / name, Path(out_dir) / name)
