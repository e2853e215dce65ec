"""An LM variant folder from a Hugging Face causal-LM folder, on both paths (onnxruntime-genai's
model builder, torch.onnx for architectures it does not know): onnxruntime-genai generates from
it exactly what transformers generates greedily."""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import run_edgekit

from edgekit.lm import export
from edgekit.lm.folder import read_lm_folder
from edgekit.lm.variants import build_variant
from models import tiny_llama

PROMPT = [0, 5, 77, 300, 12, 9, 400]
NEW_TOKENS = 16


def transformers_greedy(folder, prompt=PROMPT, new_tokens=NEW_TOKENS) -> list[int]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
        )
    return out[0, len(prompt) :].tolist()


def genai_greedy(variant, prompt=PROMPT, new_tokens=NEW_TOKENS) -> list[int]:
    """onnxruntime-genai's own generation loop on the variant folder, as a device runs it."""
    import onnxruntime_genai as og

    model = og.Model(str(variant))
    params = og.GeneratorParams(model)
    total = len(prompt) + new_tokens
    params.set_search_options(max_length=total, min_length=total, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt)
    tokens = []
    while not generator.is_done():
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    return tokens


def test_the_builder_architectures_are_the_installed_builders():
    """BUILDER_ARCHITECTURES is read off onnxruntime-genai 0.18's dispatch: the installed builder
    must still name each (an upgrade that drops one would send it down the wrong path)."""
    import onnxruntime_genai  # fast; importing its builder takes seconds (transformers, onnx_ir)

    builder = Path(onnxruntime_genai.__file__).parent / "models" / "builder.py"
    source = builder.read_text(encoding="utf-8")
    missing = [a for a in export.BUILDER_ARCHITECTURES if f'"{a}"' not in source]
    assert not missing
    llama = SimpleNamespace(architecture="LlamaForCausalLM", vocab_size=512, hidden_size=64)
    assert export.exporter_for(llama) == "builder"
    neox = SimpleNamespace(architecture="GPTNeoXForCausalLM", vocab_size=512, hidden_size=64)
    assert export.exporter_for(neox) == "torch"
    square = SimpleNamespace(architecture="LlamaForCausalLM", vocab_size=512, hidden_size=512)
    assert export.exporter_for(square) == "torch"  # the builder gets it wrong (test below)


@pytest.mark.slow
def test_builder_path_generates_what_transformers_generates(
    tiny_llama_folder, tiny_llama_optimized
):
    out, _ = tiny_llama_optimized  # its fp32 variant is the builder's (LlamaForCausalLM)
    variant = out / "fp32"
    report = json.loads((out / "report.json").read_text())
    assert report["variants"][0]["passes"][0]["settings"]["exporter"] == "builder"
    config = json.loads((variant / "genai_config.json").read_text())
    assert config["model"]["decoder"]["inputs"]["past_key_names"] == "past_key_values.%d.key"
    assert (variant / "tokenizer.json").is_file()
    assert genai_greedy(variant) == transformers_greedy(tiny_llama_folder)


@pytest.mark.slow
def test_int4_quantizes_the_embedding_and_prunes_the_head(tiny_llama_optimized, tiny_llama_heldout):
    """The untied tiny Llama's int4: its token embedding is int4 (GatherBlockQuantized, no float
    vocabulary x hidden table left), its LM head computes the last position only in a prefill;
    onnxruntime-genai generates what LogitsModel (every position restored) does, and the drift
    against fp32 stays within the drift tests' bounds."""
    import numpy as np
    import onnx

    from edgekit.lm.drift import heldout_windows, lm_drift
    from edgekit.lm.logits import LogitsModel
    from edgekit.lm.tokenizer import Tokenizer

    out, _ = tiny_llama_optimized
    int4 = out / "int4"
    graph = onnx.load(str(int4 / "model.onnx"), load_external_data=False).graph
    (embed,) = [n for n in graph.node if "input_ids" in n.input]
    assert embed.op_type == "GatherBlockQuantized"
    types = {i.name: i.data_type for i in graph.initializer}
    assert types[embed.input[0]] in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4)
    float_tables = [
        i.name
        for i in graph.initializer
        if list(i.dims) == [512, 64] and i.data_type == onnx.TensorProto.FLOAT
    ]
    assert float_tables == []  # vocabulary x hidden in float32: the embedding before
    (logits,) = [o for o in graph.output if o.name == "logits"]
    assert logits.type.tensor_type.shape.dim[1].dim_value == 1  # last position only

    model = LogitsModel(int4)
    assert model.sequence_logits(np.array(PROMPT)).shape == (len(PROMPT), 512)
    assert genai_greedy(int4) == model.greedy(PROMPT, NEW_TOKENS)
    tokenizer = Tokenizer.from_folder(int4)
    windows = heldout_windows(tokenizer, tiny_llama_heldout.read_text(), 128, 4)
    drift = lm_drift(LogitsModel(out / "fp32"), model, windows, [np.array(PROMPT)], 16)
    assert 1e-4 < drift["kld_mean"] < 0.05 and 0.5 < drift["same_top1"] < 1


@pytest.mark.slow
def test_torch_path_generates_what_transformers_generates(tmp_path):
    # GPTNeoXForCausalLM: an architecture onnxruntime-genai's builder does not know
    source = tiny_llama(tmp_path / "neox", architecture="GPTNeoXForCausalLM")
    folder = read_lm_folder(source)
    assert export.exporter_for(folder) == "torch"
    variant = build_variant(folder, tmp_path / "fp32", "fp32", threads=2)
    inputs = json.loads((variant / "genai_config.json").read_text())["model"]["decoder"]["inputs"]
    assert inputs["past_value_names"] == "past_key_values.%d.value"
    assert genai_greedy(variant) == transformers_greedy(source)


@pytest.mark.slow
def test_an_architecture_no_exporter_knows_exits_2(tiny_llama_folder, tmp_path):
    source = tmp_path / "odd-lm"
    shutil.copytree(tiny_llama_folder, source)
    config = json.loads((source / "config.json").read_text())
    config.update(architectures=["FrobnicatorForCausalLM"], model_type="frobnicator")
    (source / "config.json").write_text(json.dumps(config))
    result = run_edgekit("optimize", source, "-o", tmp_path / "out")
    assert result.returncode == 2, result.stderr
    assert "FrobnicatorForCausalLM" in result.stderr
    assert "LlamaForCausalLM" in result.stderr  # what is supported
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_square_embedding_goes_the_torch_way_and_generates_right(tmp_path):
    """onnxruntime-genai 0.18's builder gets a Llama whose vocabulary is as large as its hidden
    size wrong (different logits at every position): edgekit takes the torch path for it."""
    from models import tiny_llama

    source = tiny_llama(tmp_path / "square", hidden=512)
    folder = read_lm_folder(source)
    assert folder.vocab_size == folder.hidden_size == 512
    variant = build_variant(folder, tmp_path / "fp32", "fp32", threads=2)
    assert genai_greedy(variant) == transformers_greedy(source)
    assert "position_ids" in (variant / "genai_config.json").read_text()  # the torch path's
