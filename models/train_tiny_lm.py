"""Train tiny-lm, a small Llama-style causal LM with its own BPE tokenizer, and save it as a user would.

    python models/train_tiny_lm.py [--out DIR]

Writes into DIR (default: this script's folder):
  tiny-lm/               a Hugging Face folder (``save_pretrained``, safetensors): config.json
                         (LlamaForCausalLM), model.safetensors, generation_config.json,
                         tokenizer.json, tokenizer_config.json (with a chat template)
  tiny-lm-heldout.txt    held-out text (never trained on) for perplexity and drift

The text is CPython's own documentation as the standard library ships it
(``pydoc_data.topics.topics``: the language reference's topics, English prose with code; PSF
licence), so it is on every machine with Python and nothing is downloaded. About a tenth of it,
as whole topics, is held out. Seeded, 2 threads, deterministic on the same CPU and versions.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from pydoc_data.topics import topics

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from edgekit.fsutil import atomic_write_text  # noqa: E402

SEED = 0
VOCAB_SIZE = 4096
SEQ_LEN = 256
BATCH_SIZE = 8
STEPS = 200
LEARNING_RATE = 3e-3
WARMUP = 20
HELDOUT_SHARE = 0.1

# Special tokens: end of text (padding too), and ChatML turns. A turn ends with <|im_end|>, which
# is also the end-of-sequence token: every training document is one chat exchange.
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def split_topics() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(name, text) of the training topics and of the held-out ones: in name order, a topic is
    held out whenever it fits in HELDOUT_SHARE of the text so far (whole topics, spread out)."""
    train, heldout = [], []
    seen = held = 0
    for name, text in sorted(topics.items()):
        seen += len(text)
        if held + len(text) <= HELDOUT_SHARE * seen:
            held += len(text)
            heldout.append((name, text))
        else:
            train.append((name, text))
    return train, heldout


def train_tokenizer(texts: list[str]) -> Tokenizer:
    """Byte-level BPE (GPT-2's pre-tokenizer: any text encodes, nothing is unknown)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[ENDOFTEXT, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def chat_document(name: str, text: str) -> str:
    """One topic as a chat exchange: the user names the topic, the assistant explains it."""
    return f"{IM_START}user\n{name}{IM_END}\n{IM_START}assistant\n{text}{IM_END}\n"


def make_config(tokenizer: Tokenizer) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.token_to_id(ENDOFTEXT),
        eos_token_id=tokenizer.token_to_id(IM_END),
        pad_token_id=tokenizer.token_to_id(ENDOFTEXT),
    )


def train(config: LlamaConfig, stream: np.ndarray) -> LlamaForCausalLM:
    """Next-token training on random SEQ_LEN windows of the token stream, a fixed step count."""
    model = LlamaForCausalLM(config)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=LEARNING_RATE,
        betas=(0.9, 0.95),
    )

    def lr_at(step: int) -> float:  # linear warm-up, then cosine to a tenth
        if step < WARMUP:
            return (step + 1) / WARMUP
        progress = (step - WARMUP) / max(1, STEPS - WARMUP)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    data = torch.from_numpy(stream.astype(np.int64))
    rng = torch.Generator().manual_seed(SEED)
    model.train()
    running = None
    for step in range(STEPS):
        starts = torch.randint(0, len(data) - SEQ_LEN, (BATCH_SIZE,), generator=rng)
        batch = torch.stack([data[s : s + SEQ_LEN] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if (step + 1) % 50 == 0:
            print(f"step {step + 1:4d}/{STEPS}  loss {running:.3f}", flush=True)
    model.eval()
    return model


@torch.no_grad()
def heldout_perplexity(model: LlamaForCausalLM, ids: list[int], window: int = 512) -> float:
    """exp(mean next-token NLL) over non-overlapping windows of the held-out tokens."""
    total, count = 0.0, 0
    for start in range(0, len(ids) - 1, window):
        chunk = torch.tensor(ids[start : start + window]).unsqueeze(0)
        if chunk.shape[1] < 2:
            break
        loss = model(input_ids=chunk, labels=chunk).loss.item()
        total += loss * (chunk.shape[1] - 1)
        count += chunk.shape[1] - 1
    return math.exp(total / count)


def save(model: LlamaForCausalLM, tokenizer: Tokenizer, folder: Path) -> None:
    """save_pretrained (safetensors, float16 weights as small models ship) + tokenizer files."""
    model.to(torch.float16).save_pretrained(folder, safe_serialization=True)
    GenerationConfig(
        bos_token_id=model.config.bos_token_id,
        eos_token_id=model.config.eos_token_id,
        pad_token_id=model.config.pad_token_id,
        do_sample=False,
        max_length=model.config.max_position_embeddings,
    ).save_pretrained(folder)
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        chat_template=CHAT_TEMPLATE,
        model_max_length=model.config.max_position_embeddings,
        clean_up_tokenization_spaces=False,
    ).save_pretrained(folder, save_jinja_files=False)  # the template inside tokenizer_config.json
    # The class every transformers version and other readers (onnxruntime-genai, llama.cpp's
    # converter) know, rather than transformers 5's name for it.
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def publish(staging: Path, target: Path) -> None:
    """Replace `target` by the finished `staging` folder; the old one goes only once the new is in."""
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp made it private; the files as any saved file
    for file in staging.iterdir():
        file.chmod(0o666 & ~umask)
    old = target.with_name(target.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    if old.exists():
        shutil.rmtree(old)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="folder for tiny-lm/ and tiny-lm-heldout.txt (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    os.environ.setdefault("RAYON_NUM_THREADS", "1")  # the BPE trainer: one thread, one merge order
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)

    train_items, heldout_items = split_topics()
    heldout_text = "\n\n".join(text for _, text in heldout_items)
    print(
        f"text: pydoc_data.topics of Python {sys.version.split()[0]}: {len(train_items)} topics "
        f"({sum(len(t) for _, t in train_items)} chars) to train, {len(heldout_items)} held out "
        f"({len(heldout_text)} chars)"
    )
    tokenizer = train_tokenizer([text for _, text in train_items])
    stream = np.array(
        [i for name, text in train_items for i in tokenizer.encode(chat_document(name, text)).ids]
    )
    heldout_ids = tokenizer.encode(heldout_text).ids
    print(f"tokenizer: {tokenizer.get_vocab_size()} tokens; {len(stream)} training tokens")

    config = make_config(tokenizer)
    model = train(config, stream)
    params = sum(p.numel() for p in model.parameters())
    ppl_train = heldout_perplexity(model, stream[: len(heldout_ids)].tolist())
    ppl = heldout_perplexity(model, heldout_ids)
    train_time = time.perf_counter() - started

    staging = Path(tempfile.mkdtemp(prefix=".tiny-lm-", dir=out))
    save(model, tokenizer, staging)
    publish(staging, out / "tiny-lm")
    atomic_write_text(out / "tiny-lm-heldout.txt", heldout_text)
    size = sum(p.stat().st_size for p in (out / "tiny-lm").iterdir())
    print(f"parameters: {params}  time: {train_time:.1f} s  folder: {size / 1e6:.1f} MB  -> {out}")
    print(f"perplexity (first {len(heldout_ids)} training tokens): {ppl_train:.2f}")
    print(f"held-out perplexity: {ppl:.2f} ({len(heldout_ids)} tokens, vocabulary {VOCAB_SIZE})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
