"""Small ONNX models the tests build: each factory writes one to `path` (as the exporters write
them: opset 17, IR 8) and returns the path. A model only one test needs stays in that test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from helpers import save_graph
from onnx import TensorProto, helper, numpy_helper


def relu_model(path: Path, shape=(1, 4)) -> Path:
    """x -> Relu -> y, both of `shape` (a string is a named, free axis)."""
    x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, list(shape)) for n in "xy")
    return save_graph(
        helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y]), path
    )


def matmul_model(
    path: Path,
    inputs: int = 64,
    outputs: int = 32,
    axis: str = "batch",
    scale: float = 1.0,
    **save_options,
) -> Path:
    """x[axis, inputs] @ w -> y[axis, outputs]: one MatMul node named "fc", seeded weights times
    `scale`; save_options go to onnx.save (external data, say)."""
    weight = np.random.default_rng(0).normal(size=(inputs, outputs)).astype(np.float32) * scale
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")],
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [axis, inputs])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [axis, outputs])],
        [numpy_helper.from_array(weight, "w")],
    )
    return save_graph(graph, path, **save_options)


CLASSES = 3  # sqrt_classifier's


def sqrt_classifier(path: Path, safe: bool = False) -> Path:
    """x[N,4] -> Sqrt (of |x| when safe) -> MatMul 4x3 -> logits[N,3]: NaN for a negative input."""
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, CLASSES) / 10 - 0.5, "w")
    nodes = [helper.make_node("Abs", ["x"], ["a"])] if safe else []
    nodes += [
        helper.make_node("Sqrt", ["a" if safe else "x"], ["s"]),
        helper.make_node("MatMul", ["s", "w"], ["y"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", CLASSES])
    return save_graph(helper.make_graph(nodes, "sqrt", [x], [y], [w]), path)


def sqrt_samples(n: int = 64, negative: int = 10) -> np.ndarray:
    """Inputs for sqrt_classifier: the first `negative` samples make its Sqrt return NaN."""
    x = np.random.default_rng(0).uniform(0.1, 2.0, size=(n, 4)).astype(np.float32)
    x[:negative, 0] *= -1
    return x


def vad_model(path: Path) -> Path:
    """A streaming-VAD-shaped graph: audio with unknown axes, a state batched on axis 1 and a
    rank-0 int64 sample rate."""
    inputs = [
        helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, None]),
        helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, None, 128]),
        helper.make_tensor_value_info("sr", TensorProto.INT64, []),
    ]
    outputs = [
        helper.make_tensor_value_info("output", TensorProto.FLOAT, [None, 1]),
        helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, None, 128]),
    ]
    nodes = [
        helper.make_node("Cast", ["sr"], ["sr_f"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["sr_f", "rate"], ["scale"]),
        helper.make_node("ReduceMean", ["input"], ["m"], axes=[1], keepdims=1),
        helper.make_node("Mul", ["m", "scale"], ["output"]),
        helper.make_node("Mul", ["state", "scale"], ["stateN"]),
    ]
    rate = helper.make_tensor("rate", TensorProto.FLOAT, [], [16000.0])
    return save_graph(helper.make_graph(nodes, "vad", inputs, outputs, [rate]), path)


def tiny_model(path: Path) -> Path:
    """x[N,16] -> MatMul 16x8 -> Relu."""
    w = numpy_helper.from_array(np.full((16, 8), 0.1, np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        [w],
    )
    return save_graph(graph, path)


TINY_LLAMA_TEXT = (
    "The cat sat on the mat and looked at the garden. A small dog ran across the field, "
    "barking at the birds in the tall trees. Rain fell over the quiet town all night, and in "
    "the morning the streets were bright and clean. She opened the window, made some tea and "
    "read a letter from her brother, who lived by the sea. "
)


CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def tiny_llama(
    path: Path,
    layers: int = 2,
    hidden: int = 64,
    seed: int = 0,
    context: int = 256,
    chat: bool = False,
    architecture: str = "LlamaForCausalLM",
) -> Path:
    """A Hugging Face causal-LM folder as `save_pretrained` writes it: LlamaForCausalLM (hidden
    64, 4 heads, 2 kv heads, vocabulary 512; or `architecture`, e.g. GPTNeoXForCausalLM, with
    the same sizes) with seeded random weights, and a byte-level BPE tokenizer trained here on a
    few sentences (tokenizer.json + tokenizer_config.json; with `chat`, a chat template too)."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    path = Path(path)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator([TINY_LLAMA_TEXT] * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>")
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(path)
    kv_heads = {"num_key_value_heads": 2} if architecture == "LlamaForCausalLM" else {}
    config = getattr(transformers, architecture.replace("ForCausalLM", "Config"))(
        **kv_heads,
        vocab_size=512,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=context,
        initializer_range=0.1,  # decisive logits: greedy ties would make generation flaky
        bos_token_id=0,
        eos_token_id=1,
    )
    torch.manual_seed(seed)
    getattr(transformers, architecture)(config).eval().save_pretrained(path)
    return path


def genai_folder(hf: Path, out: Path, precision: str = "fp32") -> Path:
    """onnxruntime-genai's model builder on a causal-LM folder (offline): an LM variant folder."""
    subprocess.run(
        [sys.executable, "-m", "onnxruntime_genai.models.builder",
         "-i", str(hf), "-o", str(out), "-p", precision, "-e", "cpu",
         "-c", str(out.parent / f"cache-{out.name}")],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    return out
