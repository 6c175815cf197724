"""Shared test setup: the plugin (and its fast-reid shims) is imported before any test module."""
import os

import torch

import unipt_plugin  # noqa: F401

# Two cores on CI: keep torch from oversubscribing them.
torch.set_num_threads(min(2, os.cpu_count() or 1))
