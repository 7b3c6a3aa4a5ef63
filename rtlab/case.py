"""Moved to :mod:`rtlab.core.case`; this name is the same module, kept for one release (removed in 0.3)."""

from ._lazy import alias_module
from .core import case

alias_module(__name__, case)
