"""Moved to :mod:`rtlab.evaluate.compare`; this name is the same module, kept for one release (removed in 0.3)."""

from ._lazy import alias_module
from .evaluate import compare

alias_module(__name__, compare)
