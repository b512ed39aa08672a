"""Offline preparation: what an offline algorithm computes once, before training, from the data
and the frozen reference (A-LoL: rewards, V(x), reference log-probs, sampling priorities)."""

from lightning_rlhf.offline.alol import OfflineTable, ValueHeadOptions, prepare_alol

__all__ = ["OfflineTable", "ValueHeadOptions", "prepare_alol"]
