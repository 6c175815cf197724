"""Text-image ReID datasets, registered in fast-reid's ``DATASET_REGISTRY`` on import."""
from .base import DatasetFormatError, TextImageDataset
from .cuhk_pedes import CUHKPEDES, CUHKPEDESVal
from .icfg_pedes import ICFGPEDES
from .luperson_t import LUPersonT
from .rstpreid import RSTPReid
from .synth_pedes import SYNTHPEDES

__all__ = ["TextImageDataset", "DatasetFormatError", "CUHKPEDES", "CUHKPEDESVal", "ICFGPEDES", "RSTPReid",
           "LUPersonT", "SYNTHPEDES"]
