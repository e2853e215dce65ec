"""edgekit: get trained PyTorch models onto edge devices and measure what they cost there."""

__version__ = "0.1.0"
