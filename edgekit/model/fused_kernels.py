"""PyTorch's fused inference kernels as the plain ops they fuse, for the exporter.

A model traced in eval mode without autograd records nn.TransformerEncoderLayer and
nn.MultiheadAttention as single fused kernels (PyTorch's "fast path"); the ONNX exporter has no
function for them, so a program holding them is decomposed with these first.
"""

from __future__ import annotations


def fused_decompositions() -> dict:
    """{fused kernel: its plain-op decomposition}, for ExportedProgram.run_decompositions."""
    import torch

    return {
        torch.ops.aten._transformer_encoder_layer_fwd.default: _encoder_layer,
        torch.ops.aten._native_multi_head_attention.default: _multi_head_attention,
    }


def _multi_head_attention(
    query, key, value, embed_dim, num_heads, qkv_weight, qkv_bias, proj_weight, proj_bias,
    mask=None, need_weights=True, average_attn_weights=True, mask_type=None,
):  # fmt: skip
    """aten._native_multi_head_attention (nn.MultiheadAttention, batch first)."""
    import math

    import torch
    import torch.nn.functional as F  # noqa: N812

    allowed = _attention_mask(mask, mask_type)
    batch, length, _ = query.shape
    head = embed_dim // num_heads
    weights, biases = qkv_weight.chunk(3), qkv_bias.chunk(3)

    def heads(x, i):
        projected = F.linear(x, weights[i], biases[i])
        return projected.view(batch, x.shape[1], num_heads, head).transpose(1, 2)

    q, k, v = heads(query, 0), heads(key, 1), heads(value, 2)
    scores = q @ k.transpose(-2, -1) / math.sqrt(head)
    if allowed is not None and allowed.dtype == torch.bool:
        scores = scores.masked_fill(allowed.logical_not(), float("-inf"))
    elif allowed is not None:
        scores = scores + allowed
    attention = scores.softmax(-1)
    out = (attention @ v).transpose(1, 2).reshape(batch, length, embed_dim)
    if not need_weights:
        attention = out.new_empty(0)
    elif average_attn_weights:
        attention = attention.mean(1)
    return F.linear(out, proj_weight, proj_bias), attention


def _encoder_layer(
    src, embed_dim, num_heads, qkv_weight, qkv_bias, proj_weight, proj_bias, use_gelu,
    norm_first, eps, norm1_weight, norm1_bias, norm2_weight, norm2_bias, ffn1_weight, ffn1_bias,
    ffn2_weight, ffn2_bias, mask=None, mask_type=None,
):  # fmt: skip
    """aten._transformer_encoder_layer_fwd (nn.TransformerEncoderLayer, batch first)."""
    import torch.nn.functional as F  # noqa: N812

    allowed = _attention_mask(mask, mask_type)

    def attend(x):
        batch, length, _ = x.shape
        qkv = F.linear(x, qkv_weight, qkv_bias)
        qkv = qkv.view(batch, length, 3, num_heads, embed_dim // num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed).transpose(1, 2)
        return F.linear(out.reshape(batch, length, embed_dim), proj_weight, proj_bias)

    def feed_forward(x):
        hidden = F.linear(x, ffn1_weight, ffn1_bias)
        hidden = F.gelu(hidden) if use_gelu else F.relu(hidden)
        return F.linear(hidden, ffn2_weight, ffn2_bias)

    def norm(x, weight, bias):
        return F.layer_norm(x, (embed_dim,), weight, bias, eps)

    if norm_first:
        x = src + attend(norm(src, norm1_weight, norm1_bias))
        return x + feed_forward(norm(x, norm2_weight, norm2_bias))
    x = norm(src + attend(src), norm1_weight, norm1_bias)
    return norm(x + feed_forward(x), norm2_weight, norm2_bias)


def _attention_mask(mask, mask_type):
    """A fused kernel's mask as scaled_dot_product_attention takes it: a bool mask there is True
    where attention is allowed (the kernels' is True where it is not), a float mask is added.
    mask_type 0: (length, length); 1: a key padding mask (batch, length); 2: (batch, heads, ...)."""
    if mask is None:
        return None
    import torch

    allowed = mask.logical_not() if mask.dtype == torch.bool else mask
    return allowed[:, None, None, :] if mask_type == 1 else allowed
