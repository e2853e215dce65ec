"""Language models made in the tests: a tiny Llama-architecture causal LM with random weights and
its own byte-level BPE tokenizer, saved the way users save one (save_pretrained), and its
onnxruntime-genai folder made by the model builder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>"]


def tiny_llama(folder: Path, *, vocab: int = 512, context: int = 256, chat: bool = True) -> Path:
    """A LlamaForCausalLM (2 layers, hidden 64, 4 heads, 2 KV heads) with random weights (seed 0)
    and a BPE tokenizer trained on Python's own documentation text, in `folder`. The
    tokenizer's vocabulary may come out below `vocab` (the model's rows stay `vocab`)."""
    import pydoc_data.topics

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    # ASCII only: every token then decodes to whole characters, so text compares exactly
    # (a random model strings byte tokens into invalid UTF-8, which decoders mend differently)
    text = "\n".join(sorted(pydoc_data.topics.topics.values())[:40]).encode("ascii", "ignore")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=SPECIAL)
    tokenizer.train_from_iterator([text.decode()], trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=SPECIAL[0], bos_token=SPECIAL[0]
    )
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        bos_token_id=0,
        eos_token_id=0,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def genai_folder(hf_folder: Path, out: Path, precision: str = "fp32") -> Path:
    """onnxruntime-genai's model builder on the folder (offline): model.onnx + genai_config.json."""
    subprocess.run(
        [sys.executable, "-m", "onnxruntime_genai.models.builder",
         "-i", str(hf_folder), "-o", str(out), "-p", precision, "-e", "cpu"],
        check=True, capture_output=True,
    )  # fmt: skip
    return out


def greedy_text(hf_folder: Path, prompt: str, new_tokens: int) -> str:
    """transformers' own greedy continuation of `prompt` (the independent reference)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_folder)
    model = AutoModelForCausalLM.from_pretrained(hf_folder).eval()
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, do_sample=False, max_new_tokens=new_tokens)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
