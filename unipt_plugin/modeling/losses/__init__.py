"""Losses of UniPT: contrastive (Eq. 1), masked language modelling (Eq. 2), identification
(Eq. 4) and semi-hard ranking (Eq. 5). The MLM masking is drawn in the data pipeline
(``unipt_plugin.data.mlm_masking``)."""
from .contrastive import all_gather_with_grad, contrastive_loss
from .identity import PartClassifiers, SharedClassifier, identity_loss, part_identity_loss
from .mlm import IGNORE_INDEX, mlm_loss
from .ranking import ranking_loss, ranking_loss_from_similarity

__all__ = [
    "contrastive_loss", "all_gather_with_grad",
    "mlm_loss", "IGNORE_INDEX",
    "ranking_loss", "ranking_loss_from_similarity",
    "SharedClassifier", "PartClassifiers", "identity_loss", "part_identity_loss",
]
