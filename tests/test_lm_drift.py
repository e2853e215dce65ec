"""LM variant folders run with plain onnxruntime (LogitsModel) give transformers' logits and greedy
tokens; the drift figures (perplexity, KLD, same top-1, greedy agreement) equal an independent
computation. The variants are made from the shipped tiny-lm by onnxruntime-genai's model builder."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO

from edgekit.errors import EdgekitError
from edgekit.lm.drift import heldout_windows, lm_drift, perplexity
from edgekit.lm.logits import LogitsModel
from edgekit.lm.tokenizer import Tokenizer

TINY_LM = REPO / "models" / "tiny-lm"
HELDOUT = REPO / "models" / "tiny-lm-heldout.txt"
CHAT_PROMPT = "<|im_start|>user\nassert<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="session")
def variants(tmp_path_factory):
    """fp32 and int4 variant folders of the shipped model, made by onnxruntime-genai's builder."""
    out = tmp_path_factory.mktemp("lm_variants")
    for precision in ("fp32", "int4"):
        done = subprocess.run(
            [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", TINY_LM,
             "-o", out / precision, "-p", precision, "-e", "cpu", "-c", out / "cache"],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
    return {p: out / p for p in ("fp32", "int4")}


@pytest.fixture(scope="session")
def tokenizer():
    return Tokenizer.from_folder(TINY_LM)


@pytest.fixture(scope="session")
def hf_model():
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(TINY_LM, dtype=torch.float32).eval()


def _prompts(tokenizer) -> list[np.ndarray]:
    text = HELDOUT.read_text()
    return [np.array(tokenizer.encode(t)) for t in (CHAT_PROMPT, text[:400], text[5000:5600])]


@pytest.mark.slow
def test_sequence_logits_equal_transformers(variants, tokenizer, hf_model):
    import torch

    ids = np.array(tokenizer.encode(HELDOUT.read_text())[:300])
    with torch.no_grad():
        expected = hf_model(torch.from_numpy(ids)[None]).logits[0].numpy()
    fp32 = LogitsModel(variants["fp32"]).sequence_logits(ids)
    assert fp32.shape == (300, 4096) and fp32.dtype == np.float32
    np.testing.assert_allclose(fp32, expected, atol=1e-4, rtol=0)
    int4 = LogitsModel(variants["int4"]).sequence_logits(ids)
    assert np.abs(int4 - expected).max() > 1e-2  # a real 4-bit model, not the float one again


@pytest.mark.slow
def test_greedy_equals_transformers_and_onnxruntime_genai(variants, tokenizer, hf_model):
    import onnxruntime_genai as og
    import torch

    new = 24
    model = LogitsModel(variants["fp32"])
    genai = og.Model(str(variants["fp32"]))
    for prompt in _prompts(tokenizer):
        with torch.no_grad():
            out = hf_model.generate(
                torch.from_numpy(prompt)[None], do_sample=False, max_new_tokens=new
            )
        expected = out[0, len(prompt) :].tolist()
        assert len(expected) == new  # no end-of-sequence on the way: all tokens compared
        assert model.greedy(prompt, new) == expected
        # the variant folder is what onnxruntime-genai runs: its own generation loop agrees
        params = og.GeneratorParams(genai)
        params.set_search_options(do_sample=False, max_length=len(prompt) + new)
        generator = og.Generator(genai, params)
        generator.append_tokens(prompt.tolist())
        tokens = []
        while not generator.is_done():
            generator.generate_next_token()
            tokens.append(int(generator.get_next_tokens()[0]))
        assert tokens == expected


def _log_softmax(logits):
    from scipy.special import log_softmax

    return log_softmax(logits.astype(np.float64), axis=-1)


@pytest.mark.slow
def test_drift_equals_an_independent_computation(variants, tokenizer):
    """Recomputed from the two logits arrays with scipy: KL as scipy.stats.entropy(p, q),
    perplexity from log_softmax, over the second half of every window (llama.cpp's choice)."""
    from scipy.stats import entropy

    reference, int4 = LogitsModel(variants["fp32"]), LogitsModel(variants["int4"])
    windows = heldout_windows(tokenizer, HELDOUT.read_text(), window=128, max_windows=4)
    prompts = _prompts(tokenizer)
    drift = lm_drift(reference, int4, windows, prompts, new_tokens=16)

    klds, same, nll_ref, nll_var = [], [], [], []
    for w in windows:
        a, b = reference.sequence_logits(w), int4.sequence_logits(w)
        for pos in range(64, 127):  # positions 64..126 predict tokens 65..127
            p, q = _log_softmax(a[pos]), _log_softmax(b[pos])
            klds.append(entropy(np.exp(p), np.exp(q)))
            same.append(int(np.argmax(a[pos]) == np.argmax(b[pos])))
            nll_ref.append(-p[w[pos + 1]])
            nll_var.append(-q[w[pos + 1]])
    agree = [
        sum(x == y for x, y in zip(reference.greedy(p, 16), int4.greedy(p, 16), strict=True)) / 16
        for p in prompts
    ]
    ppl_ref, ppl_var = np.exp(np.mean(nll_ref)), np.exp(np.mean(nll_var))
    assert len(klds) == 4 * 63
    assert drift["kld_mean"] == pytest.approx(np.mean(klds), rel=1e-6)
    assert drift["same_top1"] == pytest.approx(np.mean(same), abs=1e-12)
    assert drift["reference_perplexity"] == pytest.approx(ppl_ref, rel=1e-9)
    assert drift["perplexity"] == pytest.approx(ppl_var, rel=1e-9)
    assert drift["ppl_increase_pct"] == pytest.approx(100 * (ppl_var / ppl_ref - 1), rel=1e-6)
    assert drift["greedy_agreement"] == pytest.approx(np.mean(agree), abs=1e-12)
    assert perplexity(reference, windows) == pytest.approx(ppl_ref, rel=1e-9)
    # the trained model learned: perplexity far below the 4096 of a uniform guess
    assert ppl_ref < 4096 / 10
    # int4 moves the distributions, but the model stays recognisably the same
    assert drift["kld_mean"] > 1e-4
    assert 0.5 < drift["same_top1"] < 1


@pytest.mark.slow
def test_a_model_against_itself_drifts_zero(variants, tokenizer):
    windows = heldout_windows(tokenizer, HELDOUT.read_text(), window=64, max_windows=2)
    drift = lm_drift(
        LogitsModel(variants["fp32"]),
        LogitsModel(variants["fp32"], threads=1),
        windows,
        _prompts(tokenizer)[:1],
        new_tokens=8,
    )
    assert drift["kld_mean"] == pytest.approx(0, abs=1e-9)
    assert drift["same_top1"] == 1 and drift["greedy_agreement"] == 1
    assert drift["ppl_increase_pct"] == pytest.approx(0, abs=1e-6)


@pytest.mark.slow
def test_more_tokens_than_the_context_are_refused(variants):
    model = LogitsModel(variants["int4"])
    assert model.context_length == 1024
    with pytest.raises(EdgekitError, match="exceed the context length"):
        model.sequence_logits(np.zeros(1025, dtype=np.int64))
    with pytest.raises(EdgekitError, match="exceed the context length"):
        model.greedy(np.zeros(1000, dtype=np.int64), 30)
    assert len(model.greedy(np.zeros(1000, dtype=np.int64), 25)) == 25  # 1000 + 24 fed: fits
    with pytest.raises(EdgekitError, match="0..4095"):
        model.sequence_logits(np.array([1, 4096]))


@pytest.mark.slow
def test_logits_and_drift_run_without_torch(variants, block_imports):
    code = (
        "import sys\n"
        "from edgekit.lm.drift import heldout_windows, lm_drift\n"
        "from edgekit.lm.logits import LogitsModel\n"
        "from edgekit.lm.tokenizer import Tokenizer\n"
        "tok = Tokenizer.from_folder(sys.argv[1])\n"
        "windows = heldout_windows(tok, open(sys.argv[3]).read(), 32, 1)\n"
        "m, v = LogitsModel(sys.argv[1]), LogitsModel(sys.argv[2])\n"
        "print(round(lm_drift(m, v, windows, windows[:1], 4)['same_top1'], 3))\n"
        "assert not {'torch', 'transformers'} & set(sys.modules)\n"
    )
    env = {**os.environ, **block_imports("torch", "transformers")}
    done = subprocess.run(
        [sys.executable, "-c", code, variants["fp32"], variants["int4"], HELDOUT],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert 0 < float(done.stdout) <= 1


def test_heldout_windows(tokenizer):
    text = HELDOUT.read_text()
    ids = tokenizer.encode(text)
    windows = heldout_windows(tokenizer, text, window=100, max_windows=3)
    assert [w.tolist() for w in windows] == [ids[0:100], ids[100:200], ids[200:300]]
    assert len(heldout_windows(tokenizer, text, 100, 10_000)) == len(ids) // 100
    with pytest.raises(EdgekitError, match="fewer than one window"):
        heldout_windows(tokenizer, "a few words", window=64, max_windows=4)


def test_a_tokenizer_that_adds_a_bos_starts_every_window_with_it(tmp_path, tokenizer):
    """As llama.cpp's perplexity tool: each window begins with the bos the tokenizer adds."""
    spec = json.loads((TINY_LM / "tokenizer.json").read_text())
    spec["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}},
                   {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [0], "tokens": ["<|endoftext|>"]}},
    }  # fmt: skip
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    with_bos = Tokenizer.from_folder(tmp_path)
    assert (with_bos.bos_token_id, tokenizer.bos_token_id) == (0, None)
    text = HELDOUT.read_text()
    ids = tokenizer.encode(text)
    assert with_bos.encode(text) == [0, *ids]
    windows = heldout_windows(with_bos, text, window=50, max_windows=3)
    # windows of the token stream [bos, *ids], the first token of each replaced by the bos
    stream = [0, *ids]
    assert [w.tolist() for w in windows] == [[0, *stream[i + 1 : i + 50]] for i in (0, 50, 100)]


def test_a_folder_without_genai_config_is_refused(tmp_path):
    with pytest.raises(EdgekitError, match="no genai_config.json"):
        LogitsModel(tmp_path)
    (tmp_path / "genai_config.json").write_text('{"model": {}}')
    with pytest.raises(EdgekitError, match="cannot be read"):
        LogitsModel(tmp_path)
