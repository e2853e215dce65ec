"""Train DigitsCNN on scikit-learn's bundled handwritten digits and save it as a user would.

    python models/train_digits.py [--out DIR]

Writes, atomically, into DIR (default: this script's folder):
  digits_cnn.pt      the trained weights, ``torch.save(model.state_dict(), path)``
  digits_test.npz    held-out 20%: ``input`` float32 (N, 1, 8, 8) in [0, 1], ``labels`` int64 (N,)
  digits_train.npz   the training 80%, same arrays (used for fine-tuning after pruning)

Needs no internet: ``load_digits`` reads data that ships inside scikit-learn. Seeded and
deterministic; runs in a few seconds on a laptop CPU.
"""

from __future__ import annotations

import argparse
import io
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from digits_cnn import DigitsCNN  # noqa: E402

from edgekit.fsutil import atomic_write_bytes  # noqa: E402

SEED = 0
EPOCHS = 15
BATCH_SIZE = 64
LEARNING_RATE = 1e-3


def load_splits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stratified 80/20 split; pixels (0..16) scaled to [0, 1], shaped (N, 1, 8, 8)."""
    digits = load_digits()
    images = (digits.images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.2, stratify=labels, random_state=SEED
    )
    return (
        np.ascontiguousarray(x_train),
        np.ascontiguousarray(x_test),
        np.ascontiguousarray(y_train),
        np.ascontiguousarray(y_test),
    )


@torch.no_grad()
def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    logits = model(torch.from_numpy(x))
    return float((logits.argmax(1).numpy() == y).mean())


def train(x_train: np.ndarray, y_train: np.ndarray) -> DigitsCNN:
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)

    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    loss_fn = nn.CrossEntropyLoss()
    x_all, y_all = torch.from_numpy(x_train), torch.from_numpy(y_train)
    order_rng = torch.Generator().manual_seed(SEED)
    for epoch in range(1, EPOCHS + 1):
        model.train()
        order = torch.randperm(len(x_all), generator=order_rng)
        total = 0.0
        for start in range(0, len(order), BATCH_SIZE):
            idx = order[start : start + BATCH_SIZE]
            optimizer.zero_grad()
            loss = loss_fn(model(x_all[idx]), y_all[idx])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch:2d}/{EPOCHS}  loss {total / len(order):.4f}")
    model.eval()
    return model


def atomic_save(path: Path, write: Callable[[io.BytesIO], None]) -> None:
    """Serialize with ``write(buffer)``, then write the file in one step (edgekit.fsutil)."""
    buffer = io.BytesIO()
    write(buffer)
    atomic_write_bytes(path, buffer.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="folder for digits_cnn.pt, digits_test.npz, digits_train.npz (default: %(default)s)",
    )
    args = parser.parse_args(argv)

    started = time.perf_counter()
    x_train, x_test, y_train, y_test = load_splits()
    print(f"digits: {len(x_train)} train / {len(x_test)} test (stratified, seed {SEED})")
    model = train(x_train, y_train)
    train_acc = accuracy(model, x_train, y_train)
    test_acc = accuracy(model, x_test, y_test)

    out: Path = args.out
    atomic_save(out / "digits_cnn.pt", lambda f: torch.save(model.state_dict(), f))
    atomic_save(
        out / "digits_test.npz", lambda f: np.savez_compressed(f, input=x_test, labels=y_test)
    )
    atomic_save(
        out / "digits_train.npz", lambda f: np.savez_compressed(f, input=x_train, labels=y_train)
    )
    params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {params}  time: {time.perf_counter() - started:.1f} s  written to {out}")
    print(f"train accuracy: {train_acc:.4f}")
    print(f"test accuracy: {test_acc:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
