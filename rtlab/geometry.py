"""Moved to :mod:`rtlab.core.geometry`; this name is the same module, kept for one release (removed in 0.3)."""

from ._lazy import alias_module
from .core import geometry

alias_module(__name__, geometry)
