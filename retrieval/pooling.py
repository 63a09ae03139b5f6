"""Pooling and normalisation: the one implementation used at training, index and query time."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

PoolingMode = Literal["mean", "cls"]


def pool(token_states: torch.Tensor, attention_mask: torch.Tensor, mode: PoolingMode) -> torch.Tensor:
    """Reduce token states to one vector per sequence.

    Args:
        token_states: ``[batch, seq, hidden]`` last-layer hidden states.
        attention_mask: ``[batch, seq]``, 1 for real tokens, 0 for padding.
        mode: ``"mean"`` averages real tokens only (padding never contributes, whatever its
            states hold); ``"cls"`` takes the first token.

    Returns:
        ``[batch, hidden]``.
    """
    if mode == "cls":
        return token_states[:, 0]
    if mode == "mean":
        mask = attention_mask.unsqueeze(-1).to(token_states.dtype)  # [batch, seq, 1]
        summed = (token_states * mask).sum(dim=1)  # [batch, hidden]
        counts = mask.sum(dim=1).clamp(min=1e-9)  # [batch, 1]
        return summed / counts
    raise ValueError(f"unknown pooling mode {mode!r}; expected 'mean' or 'cls'")


def l2_normalize(vectors: torch.Tensor) -> torch.Tensor:
    """Scale each row of ``[batch, dim]`` to unit length (zero rows stay zero)."""
    return F.normalize(vectors, p=2, dim=-1)
