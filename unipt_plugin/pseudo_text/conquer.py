"""Conquer stage: CLIP similarities between images and attribute prompts -> chosen phrase classes.

* Prompt embeddings are computed once per run (``ClassEmbeddings``): every prompt of a class
  (one per prompt template of its attribute) is encoded, L2-normalised, averaged and normalised
  again (prompt ensembling), giving one unit vector per class.
* ``select_attributes`` is a pure function of the (N, K) cosine-similarity matrix:
  required attribute = the class with the highest cosine; optional attribute = softmax over
  that attribute's classes (its negative included) at the model's logit scale; the best class is
  kept when its probability exceeds the threshold and it is not the negative ("none" otherwise).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .vocabulary import NEGATIVE_ID, Vocabulary

logger = logging.getLogger(__name__)

__all__ = ["Selection", "select_attributes", "encode_class_prompts", "ClipConquer"]


@dataclass(frozen=True)
class Selection:
    """Chosen classes of a batch.

    Attributes:
        ids: per image, attribute name -> chosen class id ("none" = optional attribute absent).
        scores: per image, attribute name -> score: the cosine similarity of the chosen class
            (required) or the highest softmax probability (optional, also when rejected).
    """

    ids: list[dict[str, str]]
    scores: list[dict[str, float]]


def select_attributes(sims: torch.Tensor, vocab: Vocabulary, logit_scale: float, threshold: float) -> Selection:
    """Choose a class per attribute from cosine similarities.

    Args:
        sims: (N, K) cosine similarities, K = ``vocab.num_classes`` (classes in file order).
        logit_scale: multiplier of the similarities inside the optional softmax (CLIP's
            ``logit_scale.exp()``, 100 for OpenAI's models).
        threshold: probability an optional class must exceed to be kept.
    """
    if sims.dim() != 2 or sims.shape[1] != vocab.num_classes:
        raise ValueError(f"similarities must be (N, {vocab.num_classes}), got {tuple(sims.shape)}")
    sims = sims.float()
    names, best_all, score_all, keep_all = [], [], [], []
    for attr, sl in vocab.class_slices().items():
        a = vocab[attr]
        block = sims[:, sl]
        if a.required:
            best_score, best = block.max(dim=1)
            keep = torch.ones_like(best, dtype=torch.bool)
        else:
            probs = torch.softmax(block * logit_scale, dim=1)
            best_score, best = probs.max(dim=1)
            keep = (best_score > threshold) & (best != a.negative_index)
        names.append(attr)
        best_all.append(best)
        score_all.append(best_score)
        keep_all.append(keep)
    # One transfer for the whole batch (the similarities may live on the GPU).
    best_l = torch.stack(best_all, 1).tolist()
    score_l = torch.stack(score_all, 1).tolist()
    keep_l = torch.stack(keep_all, 1).tolist()
    class_ids = [vocab[name].class_ids for name in names]
    ids = [{name: (cids[b] if k else NEGATIVE_ID) for name, cids, b, k in zip(names, class_ids, br, kr)}
           for br, kr in zip(best_l, keep_l)]
    scores = [dict(zip(names, sr)) for sr in score_l]
    return Selection(ids=ids, scores=scores)


@torch.no_grad()
def encode_class_prompts(model: torch.nn.Module, tokenizer: Any, vocab: Vocabulary, device: torch.device,
                         batch_size: int = 256) -> torch.Tensor:
    """(K, D) unit embeddings of every class (prompt ensemble), K = ``vocab.num_classes``."""
    prompts: list[str] = []
    owner: list[int] = []
    k = 0
    for a in vocab.attributes:
        for c in a.classes:
            prompts.extend(c.prompts)
            owner.extend([k] * len(c.prompts))
            k += 1
    feats = []
    for start in range(0, len(prompts), batch_size):
        tokens = tokenizer(prompts[start:start + batch_size]).to(device)
        feats.append(F.normalize(model.encode_text(tokens).float(), dim=-1))
    feats_t = torch.cat(feats)
    index = torch.tensor(owner, device=feats_t.device)
    summed = torch.zeros(k, feats_t.shape[1], device=feats_t.device).index_add_(0, index, feats_t)
    logger.info("encoded %d prompts for %d classes", len(prompts), k)
    return F.normalize(summed, dim=-1)


class ClipConquer:
    """Scores image batches against the class embeddings computed once at construction.

    Args:
        model: an open_clip CLIP model (frozen, eval mode) on ``device``.
        tokenizer: its tokenizer.
        threshold: optional-attribute probability threshold (paper: 0.9).
        logit_scale: softmax scale; None = the model's own ``logit_scale.exp()``.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, vocab: Vocabulary, device: str | torch.device = "cpu",
                 threshold: float = 0.9, logit_scale: float | None = None) -> None:
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {threshold}")
        self.model, self.vocab, self.threshold = model, vocab, threshold
        self.device = torch.device(device)
        self.logit_scale = float(model.logit_scale.exp().item()) if logit_scale is None else float(logit_scale)
        self.class_embeddings = encode_class_prompts(model, tokenizer, vocab, self.device)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, D) unit image embeddings."""
        return F.normalize(self.model.encode_image(images.to(self.device, non_blocking=True)).float(), dim=-1)

    @torch.no_grad()
    def similarities(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, K) cosine similarities to every class."""
        return self.encode_images(images) @ self.class_embeddings.T

    def __call__(self, images: torch.Tensor) -> Selection:
        return select_attributes(self.similarities(images), self.vocab, self.logit_scale, self.threshold)
