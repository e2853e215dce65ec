"""Reference model shapes for the scripts in tools/: torchvision is not a dependency, so the
ResNet-18 layout is written out here, once. Random weights: these are for latency, not accuracy."""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.down is None else self.down(x)))


class ResNet18(nn.Module):
    """torchvision's resnet18 layout: BasicBlocks [2, 2, 2, 2], widths 64-128-256-512."""

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
        )
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class BertLayer(nn.Module):
    """One encoder layer: multi-head self-attention with an additive padding mask, GELU FFN,
    LayerNorm before each sublayer (pre-LN, as in most recent encoders: the outlier channels of
    the LayerNorms then reach exactly the MatMuls that read them and not the residual stream)."""

    def __init__(self, hidden: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(hidden)
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.ff1 = nn.Linear(hidden, ffn)
        self.ff2 = nn.Linear(ffn, hidden)

    def forward(self, x, mask_bias):
        n, s, h = x.shape
        d = h // self.heads
        y = self.norm1(x)

        def heads(t):
            return t.reshape(n, s, self.heads, d).transpose(1, 2)

        q, k, v = heads(self.query(y)), heads(self.key(y)), heads(self.value(y))
        att = torch.softmax(q @ k.transpose(-1, -2) / d**0.5 + mask_bias, dim=-1)
        x = x + self.out((att @ v).transpose(1, 2).reshape(n, s, h))
        return x + self.ff2(nn.functional.gelu(self.ff1(self.norm2(x))))


class SentenceEncoder(nn.Module):
    """A sentence-embedding-shaped encoder (MiniLM-like: hidden 384, 6 heads, FFN 1536):
    token ids + attention mask → BERT-style layers → masked mean pooling → L2 normalisation.

    Outlier channels as trained BERTs have them: every LayerNorm's gamma and beta are scaled
    ×20, ×35 and ×50 on three hidden channels, so the MatMuls reading LayerNorm outputs (Q, K,
    V and the FFN input projection) see a few channels 20–50 times larger than the rest — what
    breaks per-tensor int8 activations — while the weights reading those channels are as many
    times smaller (the float function is that of the model without outliers). Two FFN channels
    carry massive activations (30 and 60 into the FFN output projection), as trained BERTs'
    do. Random weights
    otherwise: drift and latency, not accuracy.
    """

    OUTLIERS = {7: 20.0, 101: 35.0, 300: 50.0}  # hidden channel → scale
    FFN_OUTLIERS = {11: 30.0, 900: 60.0}  # FFN channel → its bias (GELU passes it on)

    def __init__(
        self, layers: int = 6, vocab: int = 2000, hidden: int = 384, heads: int = 6, seq: int = 128
    ) -> None:
        super().__init__()
        self.words = nn.Embedding(vocab, hidden)
        self.positions = nn.Embedding(seq, hidden)
        self.layers = nn.ModuleList(BertLayer(hidden, heads, 4 * hidden) for _ in range(layers))
        self.norm = nn.LayerNorm(hidden)
        with torch.no_grad():
            for layer in self.layers:
                readers = {
                    layer.norm1: (layer.query, layer.key, layer.value),
                    layer.norm2: (layer.ff1,),
                }
                for norm, linears in readers.items():
                    norm.bias.normal_(0, 0.1)
                    for channel, scale in self.OUTLIERS.items():
                        norm.weight[channel] *= scale
                        norm.bias[channel] = scale * 0.5
                        for linear in linears:  # as trained: small weights read the big channels
                            linear.weight[:, channel] /= scale
                for channel, bias in self.FFN_OUTLIERS.items():  # massive FFN activations
                    layer.ff1.bias[channel] = bias
                    layer.ff2.weight[:, channel] /= bias

    def forward(self, input_ids, attention_mask):
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.words(input_ids) + self.positions(positions)
        mask = attention_mask.to(x.dtype)
        mask_bias = (1.0 - mask)[:, None, None, :] * -10000.0
        for layer in self.layers:
            x = layer(x, mask_bias)
        x = self.norm(x)
        pooled = (x * mask[:, :, None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
        return nn.functional.normalize(pooled, dim=-1)


def SentenceEncoder4():  # noqa: N802 (an --arch factory, named like the class it makes)
    """The 4-layer encoder the tests use (a faster run)."""
    return SentenceEncoder(layers=4)


def sentence_batch(count: int, seq: int = 128, vocab: int = 2000, seed: int = 0):
    """Token ids and attention masks as a tokenizer pads them: each row a random length, then 0s."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, size=(count, seq)).astype(np.int64)
    lengths = rng.integers(seq // 4, seq + 1, size=count)
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    return {"input_ids": ids * mask, "attention_mask": mask}


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetV2(nn.Module):
    """torchvision's mobilenet_v2 layout (width 1.0): inverted residual blocks with depthwise
    3x3 convolutions and ReLU6, 32 → 1280 channels."""

    SETTINGS = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )  # fmt: skip  (expand, channels, repeats, stride)

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        layers = [nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6()]
        cin = 32
        for expand, cout, repeats, stride in self.SETTINGS:
            for i in range(repeats):
                layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        layers += [nn.Conv2d(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(1280, classes)

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))
