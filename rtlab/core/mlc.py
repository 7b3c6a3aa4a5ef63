"""Multileaf collimator (MLC) models, as data.

An :class:`MLC` describes what a leaf sequencer must honour: leaf width and number of pairs
(the field length across the leaves), the maximum field along the leaf travel, the minimum gap
between opposing leaves, whether neighbouring leaves may interdigitate, and the maximum leaf
speed (for dynamic delivery). Leaves travel along the beam's-eye-view x axis; leaf pairs are
stacked along y (the gantry-rotation axis for a coplanar beam).

The built-in models are generic (not a vendor's specification):

================================  ======  =====  ==========  =========  ===============  ======
name                              width   pairs  max field   min gap    interdigitation  speed
================================  ======  =====  ==========  =========  ===============  ======
``generic_5mm_60``                5 mm    60     400 x 300   0.5 mm     yes              25 mm/s
``generic_10mm_40_noid``          10 mm   40     400 x 400   1.0 mm     no               20 mm/s
``generic_10mm_60``               10 mm   60     400 x 600   0.5 mm     yes              25 mm/s
================================  ======  =====  ==========  =========  ===============  ======

(max field is along-travel x across-leaves, in mm at the isocentre plane.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .._util import check_positive

__all__ = ["MLC", "get_mlc", "list_mlcs", "BUILTIN_MLCS"]


@dataclass(frozen=True)
class MLC:
    """A multileaf collimator model.

    Parameters
    ----------
    name : str
    leaf_width_mm : float
        Width of one leaf projected to the isocentre plane (mm).
    n_pairs : int
        Number of leaf pairs.
    max_field_mm : float
        Maximum field size along the leaf travel direction at the isocentre (mm).
    min_gap_mm : float
        Minimum distance between the tips of an opposing pair (mm); closed pairs sit at this gap.
    interdigitation : bool
        Whether a leaf may travel past the opposing leaf of a neighbouring pair.
    leaf_speed_mm_s : float
        Maximum leaf speed at the isocentre plane (mm/s).
    transmission : float
        Fraction of the open-field fluence that passes through a closed leaf (0 to neglect).
    """

    name: str
    leaf_width_mm: float
    n_pairs: int
    max_field_mm: float
    min_gap_mm: float = 0.5
    interdigitation: bool = True
    leaf_speed_mm_s: float = 25.0
    transmission: float = 0.0

    def __post_init__(self):
        check_positive(f"leaf_width_mm of MLC {self.name!r}", self.leaf_width_mm)
        check_positive(f"max_field_mm of MLC {self.name!r}", self.max_field_mm)
        check_positive(f"leaf_speed_mm_s of MLC {self.name!r}", self.leaf_speed_mm_s)
        check_positive(f"min_gap_mm of MLC {self.name!r}", self.min_gap_mm, allow_zero=True)
        if int(self.n_pairs) != self.n_pairs or self.n_pairs < 1:
            raise ValueError(f"n_pairs of MLC {self.name!r} must be a positive integer, got {self.n_pairs!r}")
        if not 0 <= self.transmission < 1:
            raise ValueError(f"transmission of MLC {self.name!r} must be in [0, 1), got {self.transmission!r}")

    @property
    def field_length_mm(self) -> float:
        """Extent across the leaves (n_pairs x leaf width), mm."""
        return self.n_pairs * self.leaf_width_mm

    def to_dict(self) -> dict:
        return asdict(self)


BUILTIN_MLCS: dict[str, MLC] = {
    m.name: m
    for m in (
        MLC("generic_5mm_60", 5.0, 60, 400.0, 0.5, True, 25.0),
        MLC("generic_10mm_40_noid", 10.0, 40, 400.0, 1.0, False, 20.0),
        MLC("generic_10mm_60", 10.0, 60, 400.0, 0.5, True, 25.0),
    )
}


def list_mlcs() -> list[str]:
    """Names of the built-in MLC models."""
    return list(BUILTIN_MLCS)


def get_mlc(name: str | MLC) -> MLC:
    """A built-in MLC by name (an :class:`MLC` instance is returned unchanged)."""
    if isinstance(name, MLC):
        return name
    try:
        return BUILTIN_MLCS[name]
    except KeyError:
        raise ValueError(f"unknown MLC {name!r}; built-in models: {list_mlcs()}") from None
