"""Moved to :mod:`rtlab.core.materials`; this name is the same module, kept for one release (removed in 0.3)."""

from ._lazy import alias_module
from .core import materials

alias_module(__name__, materials)
