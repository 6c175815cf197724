"""Masked language modelling (BERT): token masking with 80/10/10 replacement, optional
whole-word masking, and the loss over masked positions."""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F

__all__ = ["mask_tokens", "mlm_loss", "IGNORE_INDEX"]

# Label of positions that are not predicted (PyTorch cross-entropy's default ignore_index).
IGNORE_INDEX = -100


def _rand(shape, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def mask_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    special_ids: Iterable[int],
    vocab_size: int,
    mask_id: int,
    prob: float = 0.15,
    mask_token_prob: float = 0.8,
    random_token_prob: float = 0.1,
    word_start_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Select tokens for MLM and corrupt them as BERT does.

    Candidates are real tokens (``attention_mask`` 1) that are not special ids. Each candidate
    is selected with probability ``prob``; with ``word_start_mask`` (bool (B, L), True where a
    token begins a word) the draw is made once per *word* and all of its pieces share it, so
    whole words are masked together and the expected share of selected tokens is still
    ``prob``. A selected token becomes ``mask_id`` with probability ``mask_token_prob``, a
    random non-special id with ``random_token_prob``, else stays unchanged (decided per token).

    Args:
        input_ids: long (B, L). attention_mask: (B, L), 1 = real token.
        special_ids: ids never selected (CLS, SEP, PAD, MASK, ...).
        vocab_size: ids are drawn from [0, vocab_size) minus ``special_ids``.
        generator: random source (its device is used for the draws); None = torch's global RNG.
    Returns:
        (masked_ids long (B, L), labels long (B, L)) with labels = the original id at selected
        positions and ``IGNORE_INDEX`` (-100) elsewhere.
    """
    if input_ids.shape != attention_mask.shape:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} and attention_mask "
                         f"{tuple(attention_mask.shape)} differ in shape")
    if not 0.0 <= prob <= 1.0 or mask_token_prob + random_token_prob > 1.0 + 1e-9:
        raise ValueError(f"MLM probabilities invalid: prob={prob}, mask={mask_token_prob}, "
                         f"random={random_token_prob} (need 0<=prob<=1, mask+random<=1)")
    device = input_ids.device
    special = torch.tensor(sorted(set(int(i) for i in special_ids)), dtype=torch.long, device=device)
    candidate = attention_mask.bool() & ~torch.isin(input_ids, special)
    b, l = input_ids.shape
    if word_start_mask is None:
        selected = (_rand((b, l), generator, device) < prob) & candidate
    else:
        if word_start_mask.shape != input_ids.shape:
            raise ValueError(f"word_start_mask {tuple(word_start_mask.shape)} must match "
                             f"input_ids {tuple(input_ids.shape)}")
        # Word index of every token: pieces share the index of the word start before them.
        word_index = torch.cumsum(word_start_mask.to(device).long(), dim=1)  # (B, L) in [0, L]
        word_draw = _rand((b, l + 1), generator, device) < prob
        selected = torch.gather(word_draw, 1, word_index) & candidate
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    u = _rand((b, l), generator, device)
    to_mask = selected & (u < mask_token_prob)
    to_random = selected & (u >= mask_token_prob) & (u < mask_token_prob + random_token_prob)
    keep = torch.ones(vocab_size, dtype=torch.bool, device=device)
    keep[special[special < vocab_size]] = False
    allowed = torch.nonzero(keep).squeeze(1)
    if allowed.numel() == 0:
        raise ValueError(f"vocab_size={vocab_size} leaves no non-special id for random replacement")
    rand_idx = (_rand((b, l), generator, device) * allowed.numel()).long().clamp_(max=allowed.numel() - 1)
    masked = input_ids.clone()
    masked[to_mask] = mask_id
    masked[to_random] = allowed[rand_idx][to_random]
    return masked, labels


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over predicted positions (BERT's normalisation of Eq. 2).

    Args:
        logits: (..., V) scores; labels: long (...) with ``IGNORE_INDEX`` where not predicted.
    Returns:
        0-d float32 tensor; 0 (still attached to ``logits``) when nothing is predicted.
    """
    logits = logits.float().reshape(-1, logits.shape[-1])
    labels = labels.reshape(-1)
    if not bool((labels != IGNORE_INDEX).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)
