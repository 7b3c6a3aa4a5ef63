"""Moved to :mod:`rtlab.methods.gk.learning`; this name is the same module, kept for one release (removed in 0.3)."""

from .._lazy import alias_module
from .gk import learning

alias_module(__name__, learning)
