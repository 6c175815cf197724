"""Losses of UniPT: contrastive (Eq. 1), masked language modelling (Eq. 2), identification
(Eq. 4) and semi-hard ranking (Eq. 5); and PLIP's: identity-based vision-language contrast
(IVLC), the CMPM / CMPC fine-tuning losses and TIC's colourisation loss (IAP's is ``mlm_loss``
over the masked attribute tokens). The MLM and IAP masking is drawn in the data pipeline
(``unipt_plugin.data.mlm_masking``, ``unipt_plugin.data.attribute_masking``)."""
from .cmpm import CMPM_TARGET_NORMS, NormSoftmaxClassifier, cmpc_loss, cmpm_loss
from .contrastive import all_gather_with_grad, contrastive_loss
from .identity import PartClassifiers, SharedClassifier, identity_loss, part_identity_loss
from .ivlc import identity_candidates, ivlc_loss
from .mlm import IGNORE_INDEX, mlm_loss
from .ranking import ranking_loss, ranking_loss_from_similarity
from .tic import chroma_target, small_gray, tic_loss

__all__ = [
    "contrastive_loss", "all_gather_with_grad",
    "mlm_loss", "IGNORE_INDEX",
    "ranking_loss", "ranking_loss_from_similarity",
    "SharedClassifier", "PartClassifiers", "identity_loss", "part_identity_loss",
    "ivlc_loss", "identity_candidates",
    "cmpm_loss", "cmpc_loss", "NormSoftmaxClassifier", "CMPM_TARGET_NORMS",
    "tic_loss", "chroma_target", "small_gray",
]
