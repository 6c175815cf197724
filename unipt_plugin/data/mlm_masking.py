"""Masked-language-modelling (BERT) token masking, drawn in the data pipeline.

:func:`mask_tokens` is the one masking function of the project: candidates are real tokens that
are not special ids, each selected (or each whole word) with probability ``prob``, and a
selected token becomes the mask id / a random non-special id / stays itself (80/10/10 by
default). :class:`MLMMasking` applies it in the training collator, once per sample, over that
sample's own real tokens, with a generator seeded from the sample's own seed (the seed
``ResumableBatchSampler`` hands out with every training index; see
:func:`unipt_plugin.data.common.sample_seed`). So a caption's mask depends on its tokens and its
seed only: not on the other captions of the batch, the padded width, the loader worker or the
number of workers, and a resumed run draws exactly the masks of an uninterrupted one, with no
generator state to save.

The loss over the predicted positions is ``unipt_plugin.modeling.losses.mlm_loss``.

Why not ``transformers.DataCollatorForWholeWordMask``: it masks, per sequence, whole words in a
shuffled order until a budget of ``max(1, round(len(tokens) * prob))`` tokens (words that would
overshoot the budget are skipped), so the number of masked tokens per caption is fixed and a
word's chance depends on its length and on the other words of the caption; it recognises words
by BERT's "##" prefix only (CLIP's BPE marks word ends), and it draws random replacements from
the whole vocabulary, special ids included, from one generator for the whole stream (masks then
depend on the order of the batches). The configuration asks for independent draws: every
candidate word selected with probability MODEL.PRETRAIN.MLM_PROB on its own, random ids never
special, which that collator cannot express.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from typing import Any

import torch

from .common import MLM_SEED_STREAM, derive_seed

__all__ = ["IGNORE_INDEX", "MLM_SEED_STREAM", "MLMMasking", "build_mlm_masking", "mask_tokens"]

logger = logging.getLogger(__name__)

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
    GPU makes no host-device copy or synchronisation per call."""
    special_t = torch.tensor(special, dtype=torch.long)
    keep = torch.ones(vocab_size, dtype=torch.bool)
    keep[special_t[(special_t >= 0) & (special_t < vocab_size)]] = False
    allowed = torch.nonzero(keep).squeeze(1)
    return special_t.to(device), allowed.to(device)


def _check_probabilities(prob: float, mask_token_prob: float, random_token_prob: float) -> None:
    if not (0.0 <= prob <= 1.0 and 0.0 <= mask_token_prob and 0.0 <= random_token_prob
            and mask_token_prob + random_token_prob <= 1.0 + 1e-9):
        raise ValueError(f"MLM probabilities invalid: MODEL.PRETRAIN.MLM_PROB = {prob}, MLM_MASK_TOKEN_PROB = "
                         f"{mask_token_prob}, MLM_RANDOM_TOKEN_PROB = {random_token_prob} (need 0 <= MLM_PROB <= 1, "
                         f"both others >= 0 and MLM_MASK_TOKEN_PROB + MLM_RANDOM_TOKEN_PROB <= 1)")


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

    Draws, in this order, from ``generator``: (B, L) uniforms for the selection ((B, L + 1),
    one per word slot, with ``word_start_mask``), (B, L) for the 80/10/10 split, (B, L) for the
    random ids. Their number depends on the shape only, so masking one row alone (as
    :class:`MLMMasking` does, over the row's real tokens) is a function of that row and the seed.

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
    _check_probabilities(prob, mask_token_prob, random_token_prob)
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


class MLMMasking:
    """Per-sample MLM masking of a collated text batch from the samples' own seeds.

    Row i is masked by :func:`mask_tokens` alone, over its first ``n_i`` positions (up to its
    last real token), with a CPU ``torch.Generator`` seeded ``derive_seed(seeds[i],
    MLM_SEED_STREAM)``: a sub-seed of the sample's seed, so that the masking draws are
    independent of the sample's augmentation draws (``AUGMENT_SEED_STREAM``). The mask
    of a caption therefore does not depend on the other captions of the batch or on the padded
    width. Whole-word starts come from ``word_start_mask`` (the tokenizer's, a per-token
    function of the ids) when given.

    Args:
        special_ids: ids never selected; vocab_size: random replacements are drawn from
            [0, vocab_size) minus the special ids (the text encoder's vocabulary: the
            meta-architecture checks that it is the tokenizer's); mask_id: the mask token.
        prob, mask_token_prob, random_token_prob: MODEL.PRETRAIN.MLM_PROB,
            MLM_MASK_TOKEN_PROB, MLM_RANDOM_TOKEN_PROB.
        word_start_mask: ids long (B, L) -> bool (B, L), True where a token begins a word
            (MODEL.PRETRAIN.WHOLE_WORD_MASK); None masks token by token.
    """

    def __init__(self, special_ids: Iterable[int], vocab_size: int, mask_id: int, prob: float = 0.15,
                 mask_token_prob: float = 0.8, random_token_prob: float = 0.1,
                 word_start_mask: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        _check_probabilities(float(prob), float(mask_token_prob), float(random_token_prob))
        self.special_ids = sorted(set(int(i) for i in special_ids))
        self.vocab_size = int(vocab_size)
        self.mask_id = int(mask_id)
        if not 0 <= self.mask_id < self.vocab_size:
            raise ValueError(f"MLM mask id {self.mask_id} is outside the vocabulary [0, {self.vocab_size})")
        if sum(0 <= i < self.vocab_size for i in self.special_ids) >= self.vocab_size:
            raise ValueError(f"vocab_size={self.vocab_size} leaves no non-special id for random replacement")
        self.prob = float(prob)
        self.mask_token_prob = float(mask_token_prob)
        self.random_token_prob = float(random_token_prob)
        self.word_start_mask = word_start_mask

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 seeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids long (B, L), attention_mask (B, L), seeds long (B,) (the samples' seeds) ->
        (mlm_ids long (B, L) masked ids, mlm_labels long (B, L): the original id at predicted
        positions, ``IGNORE_INDEX`` elsewhere), on the CPU."""
        if input_ids.dim() != 2 or input_ids.shape != attention_mask.shape:
            raise ValueError(f"MLM masking expects text_ids and text_mask of one shape (B, L), got "
                             f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}")
        b, l = input_ids.shape
        if tuple(seeds.shape) != (b,):
            raise ValueError(f"MLM masking expects one seed per caption: seeds {tuple(seeds.shape)} for {b} captions")
        ids = input_ids.cpu().long()
        real = attention_mask.cpu().bool()
        starts = self.word_start_mask(ids).cpu().bool() if self.word_start_mask is not None else None
        # n_i = 1 + the position of the row's last real token (the tokenizer pads at the end,
        # so this is its number of tokens); 0 for a row without any.
        widths = (real.long() * torch.arange(1, l + 1)).amax(dim=1).tolist() if l else [0] * b
        masked = ids.clone()
        labels = torch.full_like(ids, IGNORE_INDEX)
        for i, (n, seed) in enumerate(zip(widths, seeds.tolist())):
            if n == 0:
                continue
            g = torch.Generator().manual_seed(derive_seed(int(seed), MLM_SEED_STREAM))
            row_m, row_l = mask_tokens(
                ids[i:i + 1, :n], real[i:i + 1, :n], self.special_ids, self.vocab_size, self.mask_id,
                prob=self.prob, mask_token_prob=self.mask_token_prob, random_token_prob=self.random_token_prob,
                word_start_mask=None if starts is None else starts[i:i + 1, :n], generator=g)
            masked[i, :n] = row_m[0]
            labels[i, :n] = row_l[0]
        return masked, labels


def build_mlm_masking(cfg: Any, tokenizer: Any) -> MLMMasking | None:
    """The training collator's masking for cfg, or None when the run has no MLM.

    MLM is on for MODEL.META_ARCHITECTURE "UniPTPretrain" with MODEL.PRETRAIN.MLM_WEIGHT > 0;
    then the masking uses MODEL.PRETRAIN.{MLM_PROB, MLM_MASK_TOKEN_PROB, MLM_RANDOM_TOKEN_PROB,
    WHOLE_WORD_MASK} and the tokenizer's special ids, mask id, vocabulary size and word starts
    (``UniPTPretrain`` refuses a text encoder whose vocabulary is not the tokenizer's).
    """
    if str(cfg.MODEL.META_ARCHITECTURE) != "UniPTPretrain" or float(cfg.MODEL.PRETRAIN.MLM_WEIGHT) <= 0:
        return None
    p = cfg.MODEL.PRETRAIN
    masking = MLMMasking(tokenizer.special_ids, tokenizer.vocab_size, tokenizer.mask_id, prob=float(p.MLM_PROB),
                         mask_token_prob=float(p.MLM_MASK_TOKEN_PROB),
                         random_token_prob=float(p.MLM_RANDOM_TOKEN_PROB),
                         word_start_mask=tokenizer.word_start_mask if bool(p.WHOLE_WORD_MASK) else None)
    logger.info("MLM masking in the training collator: MLM_PROB %.3g (%s), %.3g mask / %.3g random token, "
                "drawn per sample from its seed", masking.prob, "whole words" if p.WHOLE_WORD_MASK else "tokens",
                masking.mask_token_prob, masking.random_token_prob)
    return masking
