"""PLIP's IAP masking in the training collator: attribute phrases -> [MASK] tokens.

Each caption's attribute phrases (character spans, ``unipt_plugin.data.attribute_spans``) are
kept with probability MODEL.PRETRAIN.IAP.PHRASE_PROB each (1 = every phrase; a draw per phrase
from a generator seeded ``derive_seed(sample seed, IAP_SEED_STREAM)`` otherwise, so a caption's
mask depends on its text and its seed only, as MLM's); every token of a kept phrase becomes the
tokenizer's mask id (no 80/10/10: the phrase is hidden, the image has to supply it), and its
label is the original id. A token belongs to a phrase when their characters overlap. Special
tokens and tokens cut off by INPUT.TEXT.MAX_LENGTH are never masked.

Token positions: the BERT tokenizer (``transformers``' fast WordPiece) gives each token's
character offsets (``return_offsets_mapping``); CLIP's BPE has none, so the caption is cut at the
spans' ends, each piece encoded on its own and the pieces' tokens counted; where the pieces do not
give the caption's own tokens (a span that begins or ends inside a word) the caption gets no IAP
token, with a warning counted per process. Captions are lower-cased as the tokenizer does
(INPUT.TEXT.LOWER_CASE), the spans mapped along when that changes the length.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from .common import IAP_SEED_STREAM, derive_seed
from .mlm_masking import IGNORE_INDEX
from .tokenizer import BertTextTokenizer, ClipTextTokenizer, TextTokenizer

__all__ = ["AttributeMasking", "build_attribute_masking", "IAP_SEED_STREAM"]

logger = logging.getLogger(__name__)


def _prepared_spans(tokenizer: TextTokenizer, caption: str,
                    spans: Sequence[tuple[int, int]]) -> tuple[str, list[tuple[int, int]]]:
    """(the caption as the tokenizer encodes it, the spans in its characters)."""
    text = caption.lower() if tokenizer.lower_case else caption
    if len(text) == len(caption):
        return text, [(int(s), int(e)) for s, e in spans]
    # lower() changed the length (e.g. "İ" -> "i̇"): map positions character by character
    starts = [0]
    for ch in caption:
        starts.append(starts[-1] + len(ch.lower()))
    return text, [(starts[int(s)], starts[int(e)]) for s, e in spans]


class AttributeMasking:
    """Per-caption IAP masks of a collated text batch.

    Args:
        tokenizer: the caption tokenizer (BERT or CLIP, ``build_tokenizer``): its mask id,
            special ids, lower-casing and encoding.
        phrase_prob: MODEL.PRETRAIN.IAP.PHRASE_PROB, the probability that a phrase is masked.
    """

    def __init__(self, tokenizer: TextTokenizer, phrase_prob: float = 1.0) -> None:
        if not isinstance(tokenizer, (BertTextTokenizer, ClipTextTokenizer)):
            raise TypeError(f"IAP masking needs the BERT or CLIP caption tokenizer (INPUT.TEXT.TOKENIZER), got "
                            f"{type(tokenizer).__name__}")
        if not 0.0 < float(phrase_prob) <= 1.0:
            raise ValueError(f"MODEL.PRETRAIN.IAP.PHRASE_PROB = {phrase_prob}: expected a probability in (0, 1]")
        self.tokenizer = tokenizer
        self.phrase_prob = float(phrase_prob)
        self.mask_id = int(tokenizer.mask_id)
        self.special_ids = frozenset(int(i) for i in tokenizer.special_ids)
        self.num_unaligned = 0

    # ------------------------------------------------------------------ spans -> tokens
    def token_positions(self, caption: str, spans: Sequence[tuple[int, int]]) -> tuple[list[int], list[int]]:
        """(the caption's token ids, start/end tokens included, not truncated; the positions of
        the tokens that overlap a span, special tokens excluded)."""
        text, spans = _prepared_spans(self.tokenizer, caption, spans)
        if isinstance(self.tokenizer, BertTextTokenizer):
            enc = self.tokenizer.hf(text, add_special_tokens=True, truncation=False, padding=False,
                                    return_offsets_mapping=True, return_attention_mask=False,
                                    return_token_type_ids=False, verbose=False)
            ids = list(enc["input_ids"])
            picked = [p for p, (a, b) in enumerate(enc["offset_mapping"])
                      if b > a and ids[p] not in self.special_ids and any(a < e and s < b for s, e in spans)]
            return ids, picked
        return self._clip_positions(text, spans)

    def _clip_positions(self, text: str, spans: Sequence[tuple[int, int]]) -> tuple[list[int], list[int]]:
        bpe = self.tokenizer.bpe
        ids = self.tokenizer._encode([text])[0]
        cuts = sorted({0, len(text), *(min(max(c, 0), len(text)) for s, e in spans for c in (s, e))})
        pieces, picked, at = [], [], 1  # position 0 is the start token
        for a, b in zip(cuts, cuts[1:]):
            piece = bpe.encode(text[a:b])
            inside = any(s <= a and b <= e for s, e in spans)
            if inside:
                picked.extend(range(at, at + len(piece)))
            pieces.extend(piece)
            at += len(piece)
        if pieces != ids[1:-1]:
            self.num_unaligned += 1
            if self.num_unaligned == 1 or self.num_unaligned % 1000 == 0:
                logger.warning("IAP: the attribute spans of %d caption(s) do not fall on CLIP token boundaries, so "
                               "they have no IAP token (e.g. %r, spans %s)", self.num_unaligned, text, list(spans))
            return ids, []
        return ids, [p for p in picked if ids[p] not in self.special_ids]

    # ------------------------------------------------------------------ batch
    def __call__(self, captions: Sequence[str], spans: Sequence[Sequence[tuple[int, int]]], text_ids: torch.Tensor,
                 text_mask: torch.Tensor, seeds: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """B captions, their spans, the collated ``text_ids`` / ``text_mask`` long (B, L) and the
        samples' seeds long (B,) (needed when PHRASE_PROB < 1) -> (iap_ids long (B, L): the ids
        with the kept phrases' tokens replaced by the mask id, iap_labels long (B, L): the
        original id there, ``IGNORE_INDEX`` elsewhere), on the CPU."""
        b, width = text_ids.shape
        if len(captions) != b or len(spans) != b:
            raise ValueError(f"IAP masking: {len(captions)} captions and {len(spans)} span lists for {b} rows")
        if self.phrase_prob < 1.0 and (seeds is None or tuple(seeds.shape) != (b,)):
            raise ValueError("IAP masking with MODEL.PRETRAIN.IAP.PHRASE_PROB < 1 draws each caption's phrases from "
                             "its sample's seed: the batch needs one seed per caption (ResumableBatchSampler)")
        ids = text_ids.cpu().long()
        real = text_mask.cpu().bool()
        labels = torch.full_like(ids, IGNORE_INDEX)
        for i, (caption, row_spans) in enumerate(zip(captions, spans)):
            row_spans = sorted((int(s), int(e)) for s, e in row_spans)
            if self.phrase_prob < 1.0 and row_spans:
                g = torch.Generator().manual_seed(derive_seed(int(seeds[i]), IAP_SEED_STREAM))
                keep = (torch.rand(len(row_spans), generator=g) < self.phrase_prob).tolist()
                row_spans = [sp for sp, k in zip(row_spans, keep) if k]
            if not row_spans:
                continue
            full, picked = self.token_positions(caption, row_spans)
            n = int(real[i].sum())
            # truncation keeps the first n - 1 tokens and puts the end token last
            kept = min(len(full), n) - 1
            if kept > 0 and ids[i, :kept].tolist() != full[:kept]:
                raise RuntimeError(f"IAP masking: caption {i} ({caption!r}) encodes to other ids than the batch's "
                                   f"text_ids; the collator and the masking must use one tokenizer")
            for p in picked:
                if p < kept:
                    labels[i, p] = ids[i, p]
        masked = torch.where(labels != IGNORE_INDEX, torch.full_like(ids, self.mask_id), ids)
        return masked, labels


def build_attribute_masking(cfg: Any, tokenizer: TextTokenizer) -> AttributeMasking | None:
    """The collator's IAP masking for cfg: on for MODEL.META_ARCHITECTURE "UniPTPretrain" with
    MODEL.PRETRAIN.IAP_WEIGHT > 0 (MODEL.PRETRAIN.IAP.PHRASE_PROB), else None."""
    p = cfg.MODEL.PRETRAIN
    if str(cfg.MODEL.META_ARCHITECTURE) != "UniPTPretrain" or float(p.IAP_WEIGHT) <= 0:
        return None
    masking = AttributeMasking(tokenizer, float(p.IAP.PHRASE_PROB))
    logger.info("IAP masking in the training collator: every token of an attribute phrase -> mask id %d, each phrase "
                "masked with probability %.3g", masking.mask_id, masking.phrase_prob)
    return masking
