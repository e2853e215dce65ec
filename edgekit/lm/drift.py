"""How far a language-model variant drifts from the float model, in the field's figures.

As llama.cpp's perplexity tool (`llama-perplexity --kl-divergence`) computes them: the held-out
text is cut into non-overlapping windows of `window` tokens, each run from an empty KV cache, and
only the second half of each window is scored (every scored token has at least window/2 tokens
of context). At each scored position:
  perplexity   exp(mean negative log-likelihood of the actual next token)
  KLD          KL(P_ref || P_variant) = sum_v p_ref(v) * (log p_ref(v) - log p_variant(v)),
               averaged over positions (llama.cpp's "Mean KLD")
  same top-1   the share of positions where both models' most likely next token is the same
Beside them, greedy agreement: each model generates `new_tokens` tokens greedily from the same
prompt (each from its own continuation); the share of positions with the same token.
Torch-free: numpy on the logits of two LogitsModels.
"""

from __future__ import annotations

import numpy as np

from edgekit.errors import EdgekitError


def heldout_windows(tokenizer, text: str, window: int, max_windows: int) -> list[np.ndarray]:
    """Up to `max_windows` non-overlapping windows of exactly `window` tokens of `text`, in
    order. If the tokenizer begins a text with its bos token, so does every window (as
    llama.cpp puts a bos at the start of each chunk)."""
    if window < 4:
        raise EdgekitError(f"A drift window of {window} tokens is too short: use 4 or more.")
    ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
    count = min(len(ids) // window, max_windows)
    if count < 1:
        raise EdgekitError(
            f"The held-out text has {len(ids)} tokens, fewer than one window of {window}: give "
            "a longer text or a shorter window."
        )
    bos = tokenizer.bos_token_id
    windows = []
    for i in range(count):
        chunk = ids[i * window : (i + 1) * window].copy()
        if bos is not None and ids[0] == bos:
            chunk[0] = bos
        windows.append(chunk)
    return windows


def perplexity(model, windows) -> float:
    """exp(mean NLL) over the second half of every window."""
    nll = np.concatenate([_scored(model.sequence_logits(w), w)[1] for w in windows])
    return float(np.exp(nll.mean()))


def lm_drift(reference, variant, windows, prompts: list[np.ndarray], new_tokens: int = 32) -> dict:
    """The variant against the reference (the float model): perplexities, mean KLD, same top-1
    on `windows`; greedy agreement over `new_tokens` tokens from each of `prompts`."""
    nll_ref, nll_var, kld, same = [], [], [], []
    for w in windows:
        log_p_ref, ref_nll = _scored(reference.sequence_logits(w), w)
        log_p_var, var_nll = _scored(variant.sequence_logits(w), w)
        nll_ref.append(ref_nll)
        nll_var.append(var_nll)
        position_kld, position_same = _divergence(log_p_ref, log_p_var)
        kld.append(position_kld)
        same.append(position_same)
    agreement = [
        np.mean(np.equal(reference.greedy(p, new_tokens), variant.greedy(p, new_tokens)))
        for p in prompts
    ]
    reference_ppl = float(np.exp(np.concatenate(nll_ref).mean()))
    ppl = float(np.exp(np.concatenate(nll_var).mean()))
    return {
        "perplexity": ppl,
        "reference_perplexity": reference_ppl,
        "ppl_increase_pct": 100.0 * (ppl / reference_ppl - 1.0),
        "kld_mean": float(np.concatenate(kld).mean()),
        "same_top1": float(np.concatenate(same).mean()),
        "greedy_agreement": float(np.mean(agreement)) if agreement else None,
    }


def next_token_divergence(reference: np.ndarray, variant: np.ndarray):
    """Per position (rows of two logits arrays): KL(P_ref || P_variant) and whether the top-1
    tokens agree (the live drift shadow compares a served answer's tokens this way)."""
    return _divergence(_log_softmax(reference), _log_softmax(variant))


def _divergence(log_p_ref: np.ndarray, log_p_var: np.ndarray):
    kld = (np.exp(log_p_ref) * (log_p_ref - log_p_var)).sum(axis=1)
    return kld, log_p_ref.argmax(axis=1) == log_p_var.argmax(axis=1)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    rows = logits.astype(np.float64)
    rows -= rows.max(axis=1, keepdims=True)
    return rows - np.log(np.exp(rows).sum(axis=1, keepdims=True))


def _scored(logits: np.ndarray, window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Log-probabilities (float64) at the scored positions (second half of the window, each
    predicting the token after it) and the negative log-likelihood of those next tokens."""
    first = len(window) // 2
    log_p = _log_softmax(logits[first : len(window) - 1])
    targets = window[first + 1 :]
    return log_p, -log_p[np.arange(len(targets)), targets]
