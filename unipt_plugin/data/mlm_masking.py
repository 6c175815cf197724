"""Masked-language-modelling (BERT) token masking, drawn in the data pipeline.

:func:`mask_tokens` is the one corruption function of the project: candidates are real tokens
that are not special ids, each selected (or each whole word) with probability ``prob`` (or the
positions given as ``selected``), and a selected token becomes the mask id / a random
non-special id / stays itself (80/10/10 by default). :class:`MLMMasking` applies it in the
training collator, once per sample, over that sample's own real tokens, with generators seeded
from the sample's own seed (the seed ``ResumableBatchSampler`` hands out with every training
index; see :func:`unipt_plugin.data.common.sample_seed`). So a caption's mask depends on its
tokens and its seed only: not on the other captions of the batch, the padded width, the loader
worker or the number of workers, and a resumed run draws exactly the masks of an uninterrupted
one, with no generator state to save.

Which tokens are selected is MODEL.PRETRAIN.MLM_SELECTION (:data:`MLM_SELECTIONS`):

* "independent" (default): every candidate word (token, with WHOLE_WORD_MASK False) selected
  with probability MODEL.PRETRAIN.MLM_PROB on its own, so the number masked per caption varies.
* "budget": the selection of ``transformers.DataCollatorForWholeWordMask`` (the authors'
  pre-training collator), whose own ``_whole_word_mask`` is called on the caption's WordPiece
  tokens: whole words (a token and the "##" pieces after it) in a shuffled order, each taken
  while it fits a budget of ``max(1, round(n * MLM_PROB))`` tokens for a caption of ``n``
  tokens (start and end tokens counted, as transformers counts ``len(input_tokens)``); a word
  that would overshoot is skipped, so exactly the budget is masked unless the words left cannot
  fill it (never when the caption has at least ``budget`` one-piece words).
* "budget_padded": the same, on the caption padded with [PAD] to INPUT.TEXT.MAX_LENGTH, as the
  authors call it (their dataset tokenises with ``padding="max_length"`` before the collator):
  the budget is ``round(MAX_LENGTH * MLM_PROB)`` (15 of 100 positions) for every caption, each
  [PAD] is a one-token candidate word that uses up budget when drawn and is then dropped (the
  collator never masks padding), so a caption of n tokens gets about ``budget * (n - 2) /
  (MAX_LENGTH - 2)`` masked tokens, a random number that can be 0.

The shuffle is Python's ``random.shuffle`` inside transformers (the authors' call passes no
``seed``), run on ``random`` seeded from the sample's seed inside a saved and restored
``random.getstate()``: the process's own ``random`` stream is left as it was (threads that use
the module-level ``random`` while a batch is collated would interleave with it; the loader's
collation does not run concurrently with other users of ``random``). Only BERT's WordPiece
tokenizer has the "##" pieces this selection reads: the budget modes refuse
INPUT.TEXT.TOKENIZER "clip" and need WHOLE_WORD_MASK True.

Where the budget modes differ from the authors' collator, deliberately: special tokens inside a
caption ([UNK], [MASK]) are never candidates (transformers 4.2.1, the authors' version, can
select and mask [UNK]); the 80/10/10 corruption is :func:`mask_tokens`' (per selected token:
[MASK] with MLM_MASK_TOKEN_PROB, a random id with MLM_RANDOM_TOKEN_PROB, else unchanged: the
same per-token distribution as transformers' ``bernoulli(0.8)`` then ``bernoulli(0.1 / 0.2)``
of the rest), drawn from the sample's torch generator rather than torch's global one, and its
random ids are never special ids (transformers draws them from the whole vocabulary,
``randint(len(tokenizer))``, [PAD], [CLS], [SEP], [MASK] and [UNK] included).

The loss over the predicted positions is ``unipt_plugin.modeling.losses.mlm_loss``.

Why "independent" does not use ``transformers.DataCollatorForWholeWordMask``: that collator
fixes the number of masked tokens per caption (a word's chance then depends on its length and
on the other words of the caption), recognises words by BERT's "##" prefix only (CLIP's BPE
marks word ends), draws random replacements from the whole vocabulary, special ids included,
and draws from generators shared by the whole stream (masks then depend on the order of the
batches). Independent draws, every candidate word selected with probability
MODEL.PRETRAIN.MLM_PROB on its own and random ids never special, are not expressible with it.
"""
from __future__ import annotations

import functools
import logging
import random
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from .common import MLM_SEED_STREAM, derive_seed

__all__ = ["IGNORE_INDEX", "MLM_SEED_STREAM", "MLM_SELECTIONS", "MLMMasking", "WholeWordBudget",
           "build_mlm_masking", "mask_tokens"]

logger = logging.getLogger(__name__)

# Label of positions that are not predicted (PyTorch cross-entropy's default ignore_index).
IGNORE_INDEX = -100

# MODEL.PRETRAIN.MLM_SELECTION values (module docstring).
MLM_SELECTIONS = ("independent", "budget", "budget_padded")

# Sub-stream of a sample's MLM seed (derive_seed(derive_seed(seed, MLM_SEED_STREAM), this)) that
# seeds Python's ``random`` for the budget modes' word shuffle; the torch generator of the
# 80/10/10 draws takes derive_seed(seed, MLM_SEED_STREAM) itself.
_SHUFFLE_SUBSTREAM = 0


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
    selected: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Select tokens for MLM and corrupt them as BERT does.

    Candidates are real tokens (``attention_mask`` 1) that are not special ids. Each candidate
    is selected with probability ``prob``; with ``word_start_mask`` (bool (B, L), True where a
    token begins a word) the draw is made once per *word* and all of its pieces share it, so
    whole words are masked together and the expected share of selected tokens is still
    ``prob``. With ``selected`` (bool (B, L), chosen beforehand, e.g. by
    :class:`WholeWordBudget`) no selection is drawn: the selected candidates are those
    positions (``prob`` and ``word_start_mask`` unused). A selected token becomes ``mask_id``
    with probability ``mask_token_prob``, a random non-special id with ``random_token_prob``,
    else stays unchanged (decided per token).

    Draws, in this order, from ``generator``: (B, L) uniforms for the selection ((B, L + 1),
    one per word slot, with ``word_start_mask``; none with ``selected``), (B, L) for the
    80/10/10 split, (B, L) for the random ids. Their number depends on the shape only, so
    masking one row alone (as :class:`MLMMasking` does, over the row's real tokens) is a
    function of that row and the seed.

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
    if selected is not None:
        if selected.shape != input_ids.shape or selected.dtype != torch.bool:
            raise ValueError(f"selected must be bool of input_ids' shape {tuple(input_ids.shape)}, got "
                             f"{selected.dtype} {tuple(selected.shape)}")
        selected = selected.to(device) & candidate
    elif word_start_mask is None:
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


class WholeWordBudget:
    """The word selection of ``transformers.DataCollatorForWholeWordMask`` for one caption, from a seed.

    Calls that collator's own ``_whole_word_mask`` (built as the authors build it:
    ``DataCollatorForWholeWordMask(tokenizer=<BERT tokenizer>, mlm=True, mlm_probability=prob)``)
    on the caption's WordPiece tokens, with Python's ``random`` seeded ``shuffle_seed`` inside a
    saved and restored ``random.getstate()``. Special tokens of the caption are given to it as
    "[SEP]", which it skips, so they are never candidates and take no budget ([CLS] and [SEP]
    are skipped by transformers itself). With ``pad_to`` the token list is first padded with
    the tokenizer's pad token to ``pad_to`` positions: each [PAD] is a one-token candidate word
    that takes budget when drawn (the budget is then ``round(pad_to * prob)``); padding is
    never returned as selected.

    Args:
        hf_tokenizer: a ``transformers`` ``BertTokenizer``/``BertTokenizerFast`` (WordPiece, "##"
            pieces; ``BertTextTokenizer.hf``).
        prob: MODEL.PRETRAIN.MLM_PROB (the collator's ``mlm_probability``).
        special_ids: ids that are never candidates.
        pad_to: None (the caption's own tokens: "budget") or INPUT.TEXT.MAX_LENGTH ("budget_padded").
    """

    def __init__(self, hf_tokenizer: Any, prob: float, special_ids: Iterable[int], pad_to: int | None = None) -> None:
        from transformers import BertTokenizer, BertTokenizerFast
        try:
            from transformers import DataCollatorForWholeWordMask
        except ImportError as e:  # deprecated since transformers 4.5x, slated for removal
            raise ImportError(f"MODEL.PRETRAIN.MLM_SELECTION 'budget'/'budget_padded' calls "
                              f"transformers.DataCollatorForWholeWordMask, which this transformers lacks: {e}") from e
        if not isinstance(hf_tokenizer, (BertTokenizer, BertTokenizerFast)):
            raise ValueError(f"the budget word selection needs a BERT WordPiece tokenizer, got "
                             f"{type(hf_tokenizer).__name__}")
        if not 0.0 <= float(prob) <= 1.0:
            raise ValueError(f"MODEL.PRETRAIN.MLM_PROB = {prob}: expected a probability in [0, 1]")
        if pad_to is not None and int(pad_to) < 1:
            raise ValueError(f"pad_to = {pad_to}: expected INPUT.TEXT.MAX_LENGTH >= 1")
        with warnings.catch_warnings():  # its deprecation notice: the class itself is what the authors call
            warnings.simplefilter("ignore", FutureWarning)
            self.collator = DataCollatorForWholeWordMask(tokenizer=hf_tokenizer, mlm=True,
                                                         mlm_probability=float(prob))
        self.prob = float(prob)
        self.pad_to = None if pad_to is None else int(pad_to)
        self.pad_token = str(hf_tokenizer.pad_token)
        tokens = hf_tokenizer.convert_ids_to_tokens(list(range(len(hf_tokenizer))))
        for i in set(int(i) for i in special_ids):
            if 0 <= i < len(tokens):
                tokens[i] = "[SEP]"  # skipped by _whole_word_mask: never a candidate
        self._tokens = tokens

    def size(self, num_tokens: int) -> int:
        """Tokens selected at most for a caption of ``num_tokens`` tokens (start/end included):
        ``min(512, max(1, round(L * prob)))`` with L = ``pad_to`` or ``num_tokens``."""
        length = self.pad_to if self.pad_to is not None else int(num_tokens)
        return min(512, max(1, int(round(length * self.prob))))

    def __call__(self, ids: Sequence[int], shuffle_seed: int) -> torch.Tensor:
        """ids: the caption's n token ids (start to end token, no padding) -> bool (n,), True at
        the selected positions (whole words; never a special token)."""
        ids = [int(i) for i in ids]
        n = len(ids)
        if self.pad_to is not None and n > self.pad_to:
            raise ValueError(f"caption of {n} tokens is longer than pad_to = INPUT.TEXT.MAX_LENGTH = {self.pad_to}")
        tokens = [self._tokens[i] for i in ids]
        if self.pad_to is not None:
            tokens += [self.pad_token] * (self.pad_to - n)
        state = random.getstate()
        try:
            random.seed(int(shuffle_seed))
            labels = self.collator._whole_word_mask(tokens)
        finally:
            random.setstate(state)
        return torch.tensor(labels[:n], dtype=torch.bool)


class MLMMasking:
    """Per-sample MLM masking of a collated text batch from the samples' own seeds.

    Row i is masked by :func:`mask_tokens` alone, over its first ``n_i`` positions (up to its
    last real token), with a CPU ``torch.Generator`` seeded ``derive_seed(seeds[i],
    MLM_SEED_STREAM)``: a sub-seed of the sample's seed, so that the masking draws are
    independent of the sample's augmentation draws (``AUGMENT_SEED_STREAM``). The mask
    of a caption therefore does not depend on the other captions of the batch or on the padded
    width. Selection "independent": drawn by :func:`mask_tokens`, whole-word starts from
    ``word_start_mask`` (the tokenizer's, a per-token function of the ids) when given. Selection
    "budget"/"budget_padded": ``budget`` chooses the positions (Python's ``random`` seeded
    ``derive_seed(derive_seed(seeds[i], MLM_SEED_STREAM), 0)``), :func:`mask_tokens` corrupts them.

    Args:
        special_ids: ids never selected; vocab_size: random replacements are drawn from
            [0, vocab_size) minus the special ids (the text encoder's vocabulary: the
            meta-architecture checks that it is the tokenizer's); mask_id: the mask token.
        prob, mask_token_prob, random_token_prob: MODEL.PRETRAIN.MLM_PROB,
            MLM_MASK_TOKEN_PROB, MLM_RANDOM_TOKEN_PROB.
        word_start_mask: ids long (B, L) -> bool (B, L), True where a token begins a word
            (MODEL.PRETRAIN.WHOLE_WORD_MASK); None masks token by token. Unused with ``budget``.
        budget: None (selection "independent") or the :class:`WholeWordBudget` of the budget modes.
    """

    def __init__(self, special_ids: Iterable[int], vocab_size: int, mask_id: int, prob: float = 0.15,
                 mask_token_prob: float = 0.8, random_token_prob: float = 0.1,
                 word_start_mask: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 budget: WholeWordBudget | None = None) -> None:
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
        self.budget = budget

    @property
    def selection(self) -> str:
        """The MODEL.PRETRAIN.MLM_SELECTION this masking implements."""
        if self.budget is None:
            return "independent"
        return "budget" if self.budget.pad_to is None else "budget_padded"

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
        starts = (self.word_start_mask(ids).cpu().bool()
                  if self.word_start_mask is not None and self.budget is None else None)
        # n_i = 1 + the position of the row's last real token (the tokenizer pads at the end,
        # so this is its number of tokens); 0 for a row without any.
        widths = (real.long() * torch.arange(1, l + 1)).amax(dim=1).tolist() if l else [0] * b
        masked = ids.clone()
        labels = torch.full_like(ids, IGNORE_INDEX)
        for i, (n, seed) in enumerate(zip(widths, seeds.tolist())):
            if n == 0:
                continue
            mlm_seed = derive_seed(int(seed), MLM_SEED_STREAM)
            g = torch.Generator().manual_seed(mlm_seed)
            selected = None
            if self.budget is not None:
                selected = self.budget(ids[i, :n].tolist(), derive_seed(mlm_seed, _SHUFFLE_SUBSTREAM))[None]
            row_m, row_l = mask_tokens(
                ids[i:i + 1, :n], real[i:i + 1, :n], self.special_ids, self.vocab_size, self.mask_id,
                prob=self.prob, mask_token_prob=self.mask_token_prob, random_token_prob=self.random_token_prob,
                word_start_mask=None if starts is None else starts[i:i + 1, :n], generator=g, selected=selected)
            masked[i, :n] = row_m[0]
            labels[i, :n] = row_l[0]
        return masked, labels


def build_mlm_masking(cfg: Any, tokenizer: Any) -> MLMMasking | None:
    """The training collator's masking for cfg, or None when the run has no MLM.

    MLM is on for MODEL.META_ARCHITECTURE "UniPTPretrain" with MODEL.PRETRAIN.MLM_WEIGHT > 0;
    then the masking uses MODEL.PRETRAIN.{MLM_PROB, MLM_MASK_TOKEN_PROB, MLM_RANDOM_TOKEN_PROB,
    WHOLE_WORD_MASK, MLM_SELECTION} and the tokenizer's special ids, mask id, vocabulary size
    and word starts (``UniPTPretrain`` refuses a text encoder whose vocabulary is not the
    tokenizer's). MLM_SELECTION "budget"/"budget_padded" (:class:`WholeWordBudget`) need the BERT
    tokenizer (INPUT.TEXT.TOKENIZER "bert") and WHOLE_WORD_MASK True; "budget_padded" pads to
    INPUT.TEXT.MAX_LENGTH. Raises ValueError naming the keys otherwise.
    """
    p = cfg.MODEL.PRETRAIN
    selection = str(p.MLM_SELECTION)
    if selection not in MLM_SELECTIONS:
        raise ValueError(f"MODEL.PRETRAIN.MLM_SELECTION = {selection!r}: expected one of {list(MLM_SELECTIONS)}")
    if str(cfg.MODEL.META_ARCHITECTURE) != "UniPTPretrain" or float(p.MLM_WEIGHT) <= 0:
        return None
    budget = None
    if selection != "independent":
        hf = getattr(tokenizer, "hf", None)
        if str(cfg.INPUT.TEXT.TOKENIZER).lower() != "bert" or hf is None:
            raise ValueError(
                f"MODEL.PRETRAIN.MLM_SELECTION = {selection!r} is transformers' DataCollatorForWholeWordMask "
                f"selection, which finds words by BERT WordPiece's '##' pieces; INPUT.TEXT.TOKENIZER = "
                f"{cfg.INPUT.TEXT.TOKENIZER!r} has none (CLIP's BPE marks word ends). Use INPUT.TEXT.TOKENIZER "
                f"'bert' or MODEL.PRETRAIN.MLM_SELECTION 'independent'")
        if not bool(p.WHOLE_WORD_MASK):
            raise ValueError(
                f"MODEL.PRETRAIN.MLM_SELECTION = {selection!r} masks whole words (DataCollatorForWholeWordMask), "
                f"but MODEL.PRETRAIN.WHOLE_WORD_MASK is False: set it True, or MLM_SELECTION 'independent' "
                f"to mask token by token")
        budget = WholeWordBudget(hf, float(p.MLM_PROB), tokenizer.special_ids,
                                 pad_to=int(cfg.INPUT.TEXT.MAX_LENGTH) if selection == "budget_padded" else None)
    masking = MLMMasking(tokenizer.special_ids, tokenizer.vocab_size, tokenizer.mask_id, prob=float(p.MLM_PROB),
                         mask_token_prob=float(p.MLM_MASK_TOKEN_PROB),
                         random_token_prob=float(p.MLM_RANDOM_TOKEN_PROB),
                         word_start_mask=tokenizer.word_start_mask if bool(p.WHOLE_WORD_MASK) else None,
                         budget=budget)
    if budget is None:
        how = "whole words" if p.WHOLE_WORD_MASK else "tokens"
    elif budget.pad_to is None:
        how = "budget of round(n * MLM_PROB) whole words per caption of n tokens"
    else:
        how = f"budget of {budget.size(0)} over the caption padded to {budget.pad_to}"
    logger.info("MLM masking in the training collator: MLM_SELECTION %s, MLM_PROB %.3g (%s), %.3g mask / %.3g "
                "random token, drawn per sample from its seed", selection, masking.prob, how,
                masking.mask_token_prob, masking.random_token_prob)
    return masking
