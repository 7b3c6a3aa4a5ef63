"""Moved to :mod:`rtlab.methods.gk.geometry_gradients`; this name is the same module, kept for one release (removed in 0.3)."""

from .._lazy import alias_module
from .gk import geometry_gradients

alias_module(__name__, geometry_gradients)
