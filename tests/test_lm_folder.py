"""A Hugging Face causal-LM folder: read as users save it, refused clearly when it is something else;
its tokenizer, torch-free."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from helpers import REPO

from edgekit.errors import EdgekitError
from edgekit.lm.folder import count_parameters, is_lm_folder, read_lm_folder
from edgekit.lm.tokenizer import Tokenizer

TINY_LM = REPO / "models" / "tiny-lm"
HELDOUT = REPO / "models" / "tiny-lm-heldout.txt"


@pytest.fixture
def copy(tmp_path):
    """A copy of the shipped model's folder, to break."""
    folder = tmp_path / "lm"
    shutil.copytree(TINY_LM, folder)
    return folder


def test_the_shipped_model_reads():
    from safetensors.numpy import load_file

    lm = read_lm_folder(TINY_LM)
    assert is_lm_folder(TINY_LM)
    assert (lm.architecture, lm.model_type) == ("LlamaForCausalLM", "llama")
    assert (lm.vocab_size, lm.context_length, lm.num_layers, lm.hidden_size) == (4096, 1024, 4, 256)
    assert lm.parameters == sum(a.size for a in load_file(TINY_LM / "model.safetensors").values())
    assert lm.tokenizer_file == TINY_LM / "tokenizer.json"
    assert "<|im_start|>" in lm.chat_template


def test_parameters_are_counted_over_shards_from_the_headers_only(tmp_path):
    from safetensors.numpy import save_file

    save_file({"a": np.zeros((3, 4), np.float32), "b": np.zeros(5, np.float16)}, tmp_path / "1.st")
    save_file({"c": np.zeros((2, 2, 2), np.float32)}, tmp_path / "2.st")
    # the tensor data cut off: only the header is read
    data = (tmp_path / "2.st").read_bytes()
    (tmp_path / "2.st").write_bytes(data[: 8 + int.from_bytes(data[:8], "little")])
    assert count_parameters([tmp_path / "1.st", tmp_path / "2.st"]) == 12 + 5 + 8


def test_a_broken_safetensors_file_is_refused(copy):
    (copy / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(EdgekitError, match="not a readable safetensors file"):
        read_lm_folder(copy)


def test_not_a_folder(tmp_path):
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"")
    with pytest.raises(EdgekitError, match="is not a folder"):
        read_lm_folder(file)
    assert not is_lm_folder(file)


def test_no_config(copy):
    (copy / "config.json").unlink()
    with pytest.raises(EdgekitError, match="has no config.json"):
        read_lm_folder(copy)
    assert not is_lm_folder(copy)


def test_a_bert_folder_is_no_causal_lm(copy):
    (copy / "config.json").write_text(
        json.dumps({"architectures": ["BertModel"], "model_type": "bert", "vocab_size": 30522})
    )
    assert not is_lm_folder(copy)
    with pytest.raises(EdgekitError, match=r"architecture \['BertModel'\].*not a causal"):
        read_lm_folder(copy)


def test_a_config_without_architectures(copy):
    (copy / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(EdgekitError, match="names no architecture"):
        read_lm_folder(copy)


def test_no_tokenizer(copy):
    (copy / "tokenizer.json").unlink()
    assert is_lm_folder(copy)  # a causal LM, but not a usable one
    with pytest.raises(EdgekitError, match="has no tokenizer.json"):
        read_lm_folder(copy)


def test_a_pickle_only_is_refused_unread(copy):
    (copy / "model.safetensors").unlink()
    # a pickle that would run code when loaded: the message names it, nothing loads it
    (copy / "pytorch_model.bin").write_bytes(b"cos\nsystem\n(S'touch pwned-by-edgekit'\ntR.")
    with pytest.raises(
        EdgekitError, match=r"pytorch_model\.bin, a pickle.*safe_serialization=True"
    ):
        read_lm_folder(copy)


def test_no_weights_at_all(copy):
    (copy / "model.safetensors").unlink()
    with pytest.raises(EdgekitError, match=r"no \*\.safetensors weights\. Save the model"):
        read_lm_folder(copy)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", ""])
def test_a_broken_config(copy, text):
    (copy / "config.json").write_text(text)
    assert not is_lm_folder(copy)
    with pytest.raises(EdgekitError, match="config.json"):
        read_lm_folder(copy)


def test_a_config_without_sizes(copy):
    config = json.loads((copy / "config.json").read_text())
    del config["num_hidden_layers"]
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(EdgekitError, match="num_hidden_layers"):
        read_lm_folder(copy)


def test_a_control_character_in_the_architecture_is_shown_escaped(copy):
    (copy / "config.json").write_text(json.dumps({"architectures": ["Evil\x1b[2JModel"]}))
    with pytest.raises(EdgekitError) as caught:
        read_lm_folder(copy)
    assert "\x1b" not in str(caught.value) and "\\x1b" in str(caught.value)


def test_the_tokenizer_matches_transformers():
    # the class AutoTokenizer picks for this folder; importing it directly leaves torch unloaded
    from transformers import PreTrainedTokenizerFast

    text = HELDOUT.read_text()[:3000]
    ours = Tokenizer.from_folder(TINY_LM)
    theirs = PreTrainedTokenizerFast.from_pretrained(TINY_LM)
    ids = ours.encode(text)
    assert ids == theirs(text)["input_ids"]
    assert ours.decode(ids) == text  # byte-level BPE: lossless
    assert ours.eos_token_id == theirs.eos_token_id == theirs.convert_tokens_to_ids("<|im_end|>")
    assert ours.vocab_size == 4096
    assert ours.bos_token_id is None  # it puts no token before a text (as GPT-2 and Qwen)
    # the chat template's turn markers are single special tokens, dropped when decoding text
    chat = theirs.apply_chat_template([{"role": "user", "content": "assert"}], tokenize=False)
    chat_ids = ours.encode(chat)
    assert chat_ids.count(theirs.convert_tokens_to_ids("<|im_start|>")) == 1
    assert ours.decode(chat_ids, skip_special_tokens=False) == chat
    assert "<|im_end|>" not in ours.decode(chat_ids)


def test_a_broken_tokenizer_is_refused(copy):
    (copy / "tokenizer.json").write_text("{}")
    with pytest.raises(EdgekitError, match="cannot be read as a tokenizer"):
        Tokenizer.from_folder(copy)
