"""Alignment training on TRL: SFT loss masks and the turn-aware GRPO reward (DESIGN §5)."""
