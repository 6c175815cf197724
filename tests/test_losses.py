"""Losses: contrastive (vs open_clip's ClipLoss and a hand computation), MLM masking
statistics (``mask_tokens``, which the data pipeline applies per sample: tests/test_mlm_collator.py),
semi-hard ranking on hand-built similarity matrices, identity losses."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from unipt_plugin.data.mlm_masking import mask_tokens
from unipt_plugin.modeling.losses import (IGNORE_INDEX, PartClassifiers, SharedClassifier,
                                          contrastive_loss, identity_loss, mlm_loss,
                                          part_identity_loss, ranking_loss,
                                          ranking_loss_from_similarity)


# ---------------------------------------------------------------- contrastive
def _hand_contrastive(img, txt, scale):
    img = [[x / math.sqrt(sum(y * y for y in v)) for x in v] for v in img.tolist()]
    txt = [[x / math.sqrt(sum(y * y for y in v)) for x in v] for v in txt.tolist()]
    n = len(img)
    sim = [[scale * sum(a * b for a, b in zip(img[i], txt[j])) for j in range(n)] for i in range(n)]
    i2t = sum(-sim[i][i] + math.log(sum(math.exp(sim[i][j]) for j in range(n))) for i in range(n)) / n
    t2i = sum(-sim[i][i] + math.log(sum(math.exp(sim[j][i]) for j in range(n))) for i in range(n)) / n
    return (i2t + t2i) / 2


@pytest.mark.parametrize("scale", [1.0, 3.7])
def test_contrastive_matches_open_clip_and_hand_computation(scale):
    from open_clip.loss import ClipLoss

    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    ours = contrastive_loss(img, txt, scale)
    ref = ClipLoss()(F.normalize(img, dim=-1), F.normalize(txt, dim=-1), torch.tensor(scale))
    assert torch.allclose(ours, ref, atol=1e-6)
    assert ours.item() == pytest.approx(_hand_contrastive(img, txt, scale), abs=1e-5)


def test_contrastive_closed_form_and_scale_gets_gradient():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # Perfectly matched unit vectors at scale 1: each row CE = -1 + log(e + 1).
    expected = -1 + math.log(math.e + 1)
    assert contrastive_loss(img, txt, 1.0).item() == pytest.approx(expected, abs=1e-6)
    scale = torch.tensor(2.0, requires_grad=True)
    contrastive_loss(img, txt, scale).backward()
    # d/ds [-s + log(e^s + 1)] = -1 + e^s / (e^s + 1)
    assert scale.grad.item() == pytest.approx(-1 + math.exp(2) / (math.exp(2) + 1), abs=1e-6)


def test_contrastive_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        contrastive_loss(torch.randn(3, 4), torch.randn(2, 4))


# ---------------------------------------------------------------- MLM masking
SPECIALS = [0, 101, 102, 103]  # pad, cls, sep, mask
MASK_ID, VOCAB = 103, 1000


def _batch(b, l, real, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(200, VOCAB, (b, l), generator=g)
    mask = torch.zeros(b, l, dtype=torch.long)
    mask[:, :real] = 1
    ids[:, 0], ids[:, real - 1] = 101, 102
    ids[:, real:] = 0
    return ids, mask


def test_mask_proportions_and_80_10_10():
    ids, mask = _batch(400, 40, 32)
    g = torch.Generator().manual_seed(1)
    selected = changed_to_mask = changed_random = unchanged = 0
    candidates = 0
    for _ in range(5):
        masked, labels = mask_tokens(ids, mask, SPECIALS, VOCAB, MASK_ID, generator=g)
        sel = labels != IGNORE_INDEX
        assert torch.equal(labels[sel], ids[sel])
        assert torch.equal(masked[~sel], ids[~sel])  # unselected tokens untouched
        candidates += 400 * 30
        selected += int(sel.sum())
        changed_to_mask += int((masked[sel] == MASK_ID).sum())
        changed_random += int(((masked[sel] != MASK_ID) & (masked[sel] != ids[sel])).sum())
        unchanged += int((masked[sel] == ids[sel]).sum())
        # random replacements are never special ids
        rnd = sel & (masked != MASK_ID) & (masked != ids)
        assert not torch.isin(masked[rnd], torch.tensor(SPECIALS)).any()
    assert selected / candidates == pytest.approx(0.15, abs=0.01)
    assert changed_to_mask / selected == pytest.approx(0.8, abs=0.02)
    assert changed_random / selected == pytest.approx(0.1, abs=0.015)
    assert unchanged / selected == pytest.approx(0.1, abs=0.015)


def test_specials_and_padding_never_selected_even_at_prob_1():
    ids, mask = _batch(8, 12, 9)
    ids[:, 4] = MASK_ID  # a special id inside the real tokens
    masked, labels = mask_tokens(ids, mask, SPECIALS, VOCAB, MASK_ID, prob=1.0,
                                 generator=torch.Generator().manual_seed(0))
    never = (mask == 0) | torch.isin(ids, torch.tensor(SPECIALS))
    assert (labels[never] == IGNORE_INDEX).all()
    assert torch.equal(masked[never], ids[never])
    assert (labels[~never] != IGNORE_INDEX).all()  # prob 1: every candidate selected


def test_whole_word_masking_groups_and_proportion():
    ids, mask = _batch(300, 40, 34, seed=3)
    # words of 1 to 3 pieces: a word starts where the pattern says
    starts = torch.zeros_like(ids, dtype=torch.bool)
    pattern = [True, True, False, True, False, False]
    for j in range(40):
        starts[:, j] = pattern[j % 6]
    word = torch.cumsum(starts.long(), dim=1)
    candidate = mask.bool() & ~torch.isin(ids, torch.tensor(SPECIALS))
    g = torch.Generator().manual_seed(5)
    total_sel = total_cand = 0
    for _ in range(4):
        masked, labels = mask_tokens(ids, mask, SPECIALS, VOCAB, MASK_ID, word_start_mask=starts, generator=g)
        sel = labels != IGNORE_INDEX
        for r in range(0, 300, 7):
            for w in word[r].unique():
                in_word = (word[r] == w) & candidate[r]
                if in_word.any():
                    vals = sel[r][in_word]
                    assert vals.all() or not vals.any(), "a word was partly masked"
        total_sel += int(sel.sum())
        total_cand += int(candidate.sum())
    assert total_sel / total_cand == pytest.approx(0.15, abs=0.015)


def test_masking_is_reproducible_with_a_seeded_generator():
    ids, mask = _batch(4, 20, 15)
    a = mask_tokens(ids, mask, SPECIALS, VOCAB, MASK_ID, generator=torch.Generator().manual_seed(9))
    b = mask_tokens(ids, mask, SPECIALS, VOCAB, MASK_ID, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_mlm_loss_is_mean_ce_over_predicted_positions():
    logits = torch.randn(2, 3, 7)
    labels = torch.tensor([[IGNORE_INDEX, 4, IGNORE_INDEX], [1, IGNORE_INDEX, 6]])
    expected = sum(-torch.log_softmax(logits[i, j], -1)[labels[i, j]] for i, j in [(0, 1), (1, 0), (1, 2)]) / 3
    assert mlm_loss(logits, labels).item() == pytest.approx(expected.item(), abs=1e-6)
    none = mlm_loss(logits.requires_grad_(), torch.full((2, 3), IGNORE_INDEX))
    assert none.item() == 0.0 and none.requires_grad


class _SyncRecorder(TorchDispatchMode):
    """Names of the ops run inside it that make the host wait for the device: reading a value
    (item / bool: _local_scalar_dense, is_nonzero) or a data-dependent shape (nonzero, as boolean
    indexing does)."""

    SYNCING = ("aten._local_scalar_dense", "aten.is_nonzero", "aten.nonzero", "aten.masked_select")

    def __init__(self):
        super().__init__()
        self.syncs = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func).startswith(self.SYNCING):
            self.syncs.append(str(func))
        return func(*args, **(kwargs or {}))


def test_mlm_loss_equals_cross_entropy_bit_for_bit_and_makes_no_sync():
    g = torch.Generator().manual_seed(4)
    for b, l, v, drop in [(2, 3, 7, 0.5), (4, 9, 50, 0.85), (1, 1, 5, 0.0), (3, 40, 300, 0.97)]:
        logits = (torch.randn(b, l, v, generator=g) * 3).requires_grad_()
        labels = torch.randint(0, v, (b, l), generator=g)
        labels[torch.rand(b, l, generator=g) < drop] = IGNORE_INDEX
        labels[0, 0] = 1  # at least one prediction
        with _SyncRecorder() as rec:
            ours = mlm_loss(logits, labels)
        assert rec.syncs == []
        ours.backward()
        ours_grad = logits.grad.clone()
        logits.grad = None
        ref = F.cross_entropy(logits.reshape(-1, v), labels.reshape(-1), ignore_index=IGNORE_INDEX)
        ref.backward()
        assert torch.equal(ours, ref) and torch.equal(ours_grad, logits.grad)
    # nothing predicted: 0, differentiable (zero gradient), for full and for empty logits
    for logits in (torch.randn(2, 3, 7).requires_grad_(), torch.randn(0, 7).requires_grad_()):
        labels = torch.full(logits.shape[:-1], IGNORE_INDEX)
        none = mlm_loss(logits, labels)
        assert none.item() == 0.0 and none.requires_grad and none.dtype == torch.float32
        none.backward()
        assert torch.equal(logits.grad, torch.zeros_like(logits))


def _reference_mask_tokens(ids, mask, specials, vocab, mask_id, prob, mask_p, rand_p, starts, g):
    """The masking algorithm written out (draw order: selection, 80/10/10 split, random ids)."""
    b, l = ids.shape
    candidate = (mask == 1) & ~torch.isin(ids, torch.tensor(specials))
    if starts is None:
        selected = (torch.rand(b, l, generator=g) < prob) & candidate
    else:
        words = torch.rand(b, l + 1, generator=g) < prob
        selected = torch.gather(words, 1, torch.cumsum(starts.long(), 1)) & candidate
    u = torch.rand(b, l, generator=g)
    allowed = torch.tensor([i for i in range(vocab) if i not in specials])
    pick = (torch.rand(b, l, generator=g) * len(allowed)).long().clamp(max=len(allowed) - 1)
    out, labels = ids.clone(), torch.full_like(ids, IGNORE_INDEX)
    for i in range(b):
        for j in range(l):
            if selected[i, j]:
                labels[i, j] = ids[i, j]
                if u[i, j] < mask_p:
                    out[i, j] = mask_id
                elif u[i, j] < mask_p + rand_p:
                    out[i, j] = allowed[pick[i, j]]
    return out, labels


@pytest.mark.parametrize("whole_word", [False, True])
def test_masking_draws_are_the_documented_ones_and_make_no_sync(whole_word):
    ids, mask = _batch(6, 16, 12, seed=2)
    starts = (ids % 3 != 0) if whole_word else None
    args = (ids, mask, SPECIALS, VOCAB, MASK_ID)
    mask_tokens(*args, prob=0.4, word_start_mask=starts)  # first call per vocabulary builds its id tables
    with _SyncRecorder() as rec:
        masked, labels = mask_tokens(*args, prob=0.4, word_start_mask=starts,
                                     generator=torch.Generator().manual_seed(11))
    assert rec.syncs == []
    exp_masked, exp_labels = _reference_mask_tokens(ids, mask, SPECIALS, VOCAB, MASK_ID, 0.4, 0.8, 0.1, starts,
                                                    torch.Generator().manual_seed(11))
    assert (labels != IGNORE_INDEX).sum() > 10
    assert torch.equal(masked, exp_masked) and torch.equal(labels, exp_labels)


# ---------------------------------------------------------------- ranking
SIM = torch.tensor([[0.9, 0.8, 0.3],
                    [0.5, 0.6, 0.55],
                    [0.1, 0.95, 0.7]])


def test_ranking_semi_hard_choice_is_random_among_candidates():
    targets = torch.tensor([0, 1, 2])
    # i2t: row0 -> 0.8 (0.1); row1 -> 0.5 or 0.55 (0.1 / 0.15); row2: 0.95 hard, 0.1 easy -> 0.
    # t2i: col0 none; col1: 0.8, 0.95 both hard -> 0; col2 -> 0.55 (0.05).
    values = []
    for seed in range(200):
        v = ranking_loss_from_similarity(SIM, targets, 0.2, torch.Generator().manual_seed(seed)).item()
        assert v == pytest.approx(0.25, abs=1e-6) or v == pytest.approx(0.30, abs=1e-6)
        values.append(v)
    share = sum(v > 0.275 for v in values) / len(values)
    assert 0.35 < share < 0.65


def test_ranking_margin_changes_the_semi_hard_window():
    targets = torch.tensor([0, 1, 2])
    # margin 0.12: only row0 (0.8 -> 0.02) and row1 (0.5 -> 0.02 or 0.55 -> 0.07) qualify
    v = ranking_loss_from_similarity(SIM, targets, 0.12, torch.Generator().manual_seed(0)).item()
    assert v == pytest.approx(0.04, abs=1e-6) or v == pytest.approx(0.09, abs=1e-6)
    # margin 0.05: no semi-hard negative at all (0.55 sits on the strict boundary of row1)
    assert ranking_loss_from_similarity(SIM, targets, 0.05).item() == 0.0


def test_ranking_no_semi_hard_contributes_zero_unless_fallback():
    targets = torch.tensor([0, 1, 2])
    hard = torch.tensor([[0.1, 0.9], [0.9, 0.1]])  # every negative beats its positive
    assert ranking_loss_from_similarity(hard, torch.tensor([0, 1]), 0.2).item() == 0.0
    # fallback: 4 anchors each 0.2 - 0.1 + 0.9 = 1.0
    assert ranking_loss_from_similarity(hard, torch.tensor([0, 1]), 0.2, hardest_fallback=True).item() == \
        pytest.approx(4.0, abs=1e-6)
    # on SIM the fallback adds row2 (0.95 -> 0.45) and col1 (0.95 -> 0.55); col0's hardest is easy
    v = ranking_loss_from_similarity(SIM, targets, 0.2, torch.Generator().manual_seed(0), True).item()
    assert v == pytest.approx(1.25, abs=1e-6) or v == pytest.approx(1.30, abs=1e-6)


def test_ranking_excludes_same_identity_pairs():
    # pairs 1 and 2 share an identity: row1 may only use col0 (0.5 -> 0.1), col2's only
    # negative is img0 (0.3, too easy); total = row0 0.1 + row1 0.1.
    v = ranking_loss_from_similarity(SIM, torch.tensor([0, 1, 1]), 0.2).item()
    assert v == pytest.approx(0.2, abs=1e-6)


def test_ranking_gradient_flows_through_positive_and_chosen_negative():
    sim = SIM.clone().requires_grad_()
    ranking_loss_from_similarity(sim, torch.tensor([0, 1, 1]), 0.2).backward()
    expected = torch.zeros(3, 3)
    expected[0, 0], expected[0, 1] = -1, 1  # row0 anchor
    expected[1, 1], expected[1, 0] = -1, 1  # row1 anchor
    assert torch.allclose(sim.grad, expected)


def test_ranking_on_embeddings_uses_cosine():
    img = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    txt = torch.tensor([[1.0, 1.0], [0.0, 5.0]])
    # cos: [[0.7071, 0], [0.7071, 1]]; margin 0.5, targets distinct:
    # row0 pos .7071 neg 0 -> not semi (window (.2071, .7071)); row1 pos 1 neg .7071 -> 0.2071
    # col0 pos .7071 neg .7071 -> not strictly below; col1 pos 1 neg 0 -> no.
    v = ranking_loss(img, txt, torch.tensor([0, 1]), 0.5).item()
    assert v == pytest.approx(0.5 - 1 + math.sqrt(0.5), abs=1e-6)


# ---------------------------------------------------------------- identity
def test_identity_losses_and_classifiers():
    torch.manual_seed(0)
    clf = SharedClassifier(8, 5, std=0.001)
    assert clf.bias.abs().sum() == 0 and clf.weight.std().item() == pytest.approx(0.001, rel=0.3)
    li, lt, y = torch.randn(4, 5), torch.randn(4, 5), torch.tensor([0, 3, 4, 1])
    assert identity_loss(li, lt, y).item() == pytest.approx(
        (F.cross_entropy(li, y) + F.cross_entropy(lt, y)).item(), abs=1e-6)
    parts = PartClassifiers(3, 8, 5, std=0.1)
    x = torch.randn(4, 3, 8)
    logits = parts(x)
    for p in range(3):
        assert torch.allclose(logits[:, p], x[:, p] @ parts.weight[p].t() + parts.bias[p], atol=1e-6)
    lt2 = torch.randn(4, 3, 5)
    expected = sum(F.cross_entropy(logits[:, p], y) + F.cross_entropy(lt2[:, p], y) for p in range(3)) / 3
    assert part_identity_loss(logits, lt2, y).item() == pytest.approx(expected.item(), abs=1e-6)
    with pytest.raises(ValueError, match="NUM_CLASSES"):
        SharedClassifier(8, 0)
