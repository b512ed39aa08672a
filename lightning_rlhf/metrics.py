"""torchmetrics for generated text and scalar signals: reward, KL, length, distinct-n, accuracy."""

from __future__ import annotations

import hashlib

import torch
from torchmetrics import MeanMetric, Metric


def ngrams(tokens: list, n: int) -> list[tuple]:
    """The n-grams of a token list, in order."""
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def stable_hash(gram: tuple[str, ...]) -> int:
    """A 63-bit hash of an n-gram that is the same in every process (``hash()`` is salted)."""
    digest = hashlib.blake2b("\x1f".join(gram).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class DistinctN(Metric):
    """Distinct-n (Li et al., 2016): unique n-grams / total n-grams over all texts seen.

    Texts are split into characters when ``unit="char"`` (the arithmetic task) or on whitespace
    (``unit="word"``). N-grams are hashed to int64 so the state syncs across processes.
    """

    full_state_update = False

    def __init__(self, n: int = 2, unit: str = "word", **kwargs) -> None:
        super().__init__(**kwargs)
        if unit not in ("word", "char"):
            raise ValueError(f"DistinctN unit must be 'word' or 'char', got {unit!r}")
        self.n, self.unit = n, unit
        self.add_state("hashes", default=[], dist_reduce_fx="cat")

    def update(self, texts: list[str]) -> None:
        for text in texts:
            tokens = list(text) if self.unit == "char" else text.split()
            grams = ngrams(tokens, self.n)
            if grams:
                self.hashes.append(
                    torch.tensor(
                        [stable_hash(g) for g in grams], dtype=torch.int64, device=self.device
                    )
                )

    def compute(self) -> torch.Tensor:
        hashes = self.hashes
        if isinstance(hashes, list):
            if not hashes:
                return torch.tensor(0.0, device=self.device)
            hashes = torch.cat(hashes)
        if hashes.numel() == 0:
            return torch.tensor(0.0, device=self.device)
        return torch.unique(hashes).numel() / torch.tensor(
            float(hashes.numel()), device=self.device
        )


class GenerationMetrics:
    """A bundle of per-sample means: reward, KL to the reference, response length, distinct-2."""

    def __init__(self, distinct_unit: str = "word") -> None:
        self.reward = MeanMetric()
        self.kl = MeanMetric()
        self.length = MeanMetric()
        self.distinct2 = DistinctN(2, unit=distinct_unit)

    def update(
        self,
        responses: list[str],
        rewards: torch.Tensor,
        kl: torch.Tensor | None,
        lengths: torch.Tensor,
    ) -> None:
        """rewards (B,), kl (B,) sequence-level KL estimates or None, lengths (B,) token counts."""
        self.reward.update(rewards.float())
        if kl is not None:
            self.kl.update(kl.float())
        self.length.update(lengths.float())
        self.distinct2.update(responses)

    def compute(self) -> dict[str, float]:
        out = {
            "reward": self.reward.compute().item(),
            "length": self.length.compute().item(),
            "distinct_2": float(self.distinct2.compute()),
        }
        if self.kl.update_count:
            out["kl"] = self.kl.compute().item()
        return out
