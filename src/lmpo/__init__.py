"""lmpo: post-train causal language models with policy optimization."""

__version__ = "0.1.0"
