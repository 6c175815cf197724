"""Masked language modelling (BERT): token masking with 80/10/10 replacement, optional
whole-word masking, and the loss over masked positions."""
from __future__ import annotations

import functools
from typing import Iterable

import torch
import torch.nn.functional as F

__all__ = ["mask_tokens", "mlm_loss", "IGNORE_INDEX"]

# Label of positions that are not predicted (PyTorch cross-entropy's default ignore_index).
IGNORE_INDEX = -100


def _rand(shape, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Uniform [0, 1) draws made on the generator's device, moved to ``device`` if it differs."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


@functools.lru_cache(maxsize=16)
def _id_tables(special: tuple[int, ...], vocab_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(special ids long (S,), non-special ids of [0, vocab_size) long (A,)) on ``device``.

    Built on the CPU and copied once per (specials, vocabulary, device), so that masking on a
    GPU makes no host-device copy or synchronisation per step."""
    special_t = torch.tensor(special, dtype=torch.long)
    keep = torch.ones(vocab_size, dtype=torch.bool)
    keep[special_t[(special_t >= 0) & (special_t < vocab_size)]] = False
    allowed = torch.nonzero(keep).squeeze(1)
    return special_t.to(device), allowed.to(device)


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
            With ids and generator on the same device (a GPU, say) masking makes no
            host-device synchronisation (after the first call per device and vocabulary).
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
    special, allowed = _id_tables(tuple(sorted(set(int(i) for i in special_ids))), int(vocab_size), device)
    if allowed.numel() == 0:
        raise ValueError(f"vocab_size={vocab_size} leaves no non-special id for random replacement")
    candidate = attention_mask.bool() & ~torch.isin(input_ids, special)
    b, l = input_ids.shape
    if word_start_mask is None:
        selected = (_rand((b, l), generator, device) < prob) & candidate
    else:
        if word_start_mask.shape != input_ids.shape:
            raise ValueError(f"word_start_mask {tuple(word_start_mask.shape)} must match "
                             f"input_ids {tuple(input_ids.shape)}")
        # Word index of every token: pieces share the index of the word start before them.
        word_index = torch.cumsum(word_start_mask.to(device, non_blocking=True).long(), dim=1)  # (B, L) in [0, L]
        word_draw = _rand((b, l + 1), generator, device) < prob
        selected = torch.gather(word_draw, 1, word_index) & candidate
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    u = _rand((b, l), generator, device)
    to_mask = selected & (u < mask_token_prob)
    to_random = selected & (u >= mask_token_prob) & (u < mask_token_prob + random_token_prob)
    rand_idx = (_rand((b, l), generator, device) * allowed.numel()).long().clamp_(max=allowed.numel() - 1)
    # torch.where rather than boolean-mask assignment: no nonzero(), so no host-device sync.
    masked = torch.where(to_mask, torch.full_like(input_ids, mask_id), input_ids)
    masked = torch.where(to_random, allowed[rand_idx], masked)
    return masked, labels


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over predicted positions (BERT's normalisation of Eq. 2).

    Computed as (sum of the per-position cross-entropies) / max(number predicted, 1) in float32
    with autocast off: the same value, bit for bit, as ``F.cross_entropy(..., ignore_index)``'s
    mean when something is predicted, 0 when nothing is, and no host-device synchronisation
    (no data-dependent branch).

    Args:
        logits: (..., V) scores; labels: long (...) with ``IGNORE_INDEX`` where not predicted.
    Returns:
        0-d float32 tensor; 0 (still attached to ``logits``) when nothing is predicted.
    """
    with torch.autocast(device_type=logits.device.type, enabled=False):
        logits = logits.float().reshape(-1, logits.shape[-1])
        labels = labels.reshape(-1)
        count = (labels != IGNORE_INDEX).sum().clamp(min=1)
        total = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
        return total / count
