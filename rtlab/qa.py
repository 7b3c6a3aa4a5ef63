"""Moved to :mod:`rtlab.evaluate.qa`; this name is the same module, kept for one release (removed in 0.3)."""

from ._lazy import alias_module
from .evaluate import qa

alias_module(__name__, qa)
