"""fast-reid's Checkpointer with safe loading, atomic writes, the RNG state, and a clear
verdict on foreign weight files."""
from __future__ import annotations

import logging
import os
from typing import Any

from fastreid.utils.checkpoint import Checkpointer
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from ..modeling.plip_weights import is_plip_checkpoint, plip_state_dict_for
from ..utils.io import atomic_torch_save, atomic_write_text, load_weights_file

logger = logging.getLogger(__name__)


class UniPTCheckpointer(Checkpointer):
    """Loads checkpoints without executing pickled code and refuses files that match nothing.

    * ``_load_file`` goes through :func:`unipt_plugin.utils.load_weights_file`
      (``weights_only=True`` or safetensors); a bare state dict (no ``"model"`` key) is accepted
      as the model's weights; PLIP's released checkpoint is mapped onto the model's names
      (:mod:`unipt_plugin.modeling.plip_weights`).
    * ``_load_model`` logs how many of the model's tensors were matched and raises a
      ``ValueError`` naming the file when none was: a weights file for another architecture must
      not silently leave the model at its random initialisation.
    * ``save`` writes the file and the ``last_checkpoint`` tag atomically (a kill during a save
      leaves the previous checkpoint and tag intact) and adds ``rng_states`` under ``"rng"``:
      one entry per process, set by ``RNGStateHook`` just before the periodic save.
    """

    rng_states: list[dict] | None = None

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        if self.rng_states is not None:
            data["rng"] = self.rng_states
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", path)
        atomic_torch_save(data, path)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write_text(os.path.join(self.save_dir, "last_checkpoint"), last_filename_basename)

    def _load_file(self, f: str) -> dict:
        self._current_file = f
        checkpoint = dict(load_weights_file(f))
        if is_plip_checkpoint(checkpoint):  # PLIP's release: its keys mapped to the model's, shape-checked
            return {"model": plip_state_dict_for(self.model, checkpoint, f)}
        if "model" not in checkpoint:
            checkpoint = {"model": checkpoint}
        return checkpoint

    def _load_model(self, checkpoint: Any):
        state = checkpoint["model"]
        model_state = self.model.state_dict()
        stripped = dict(state)  # a copy: fast-reid's own loading below gets the checkpoint as it is
        consume_prefix_in_state_dict_if_present(stripped, "module.")
        matched = [k for k, v in stripped.items()
                   if k in model_state and hasattr(v, "shape") and tuple(v.shape) == tuple(model_state[k].shape)]
        source = getattr(self, "_current_file", "<checkpoint>")
        if not matched:
            raise ValueError(
                f"{source}: none of its {len(stripped)} tensors matches the model "
                f"({len(model_state)} tensors; e.g. checkpoint key {next(iter(stripped), None)!r} vs "
                f"model key {next(iter(model_state), None)!r}). It was made for another architecture: "
                f"check MODEL.META_ARCHITECTURE / MODEL.BACKBONE.NAME / MODEL.VISUAL.ARCH, or load "
                f"encoder weights through MODEL.VISUAL.WEIGHTS / MODEL.TEXT.WEIGHTS instead."
            )
        logger.info("Matched %d of the model's %d tensors in %s", len(matched), len(model_state), source)
        return super()._load_model(checkpoint)
