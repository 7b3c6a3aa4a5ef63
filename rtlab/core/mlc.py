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
``millennium_120``                10/5    60     400 x 400   0.5 mm     yes              25 mm/s
``hd_120``                        5/2.5   60     400 x 220   0.5 mm     yes              25 mm/s
================================  ======  =====  ==========  =========  ===============  ======

(max field is along-travel x across-leaves, in mm at the isocentre plane.)

Leaves of unequal width: ``leaf_widths_mm`` lists every pair's width (outermost first, in the
order of increasing y); ``millennium_120`` is 10 x 10 mm, 40 x 5 mm, 10 x 10 mm (the geometry of
a Varian Millennium 120 MLC) and ``hd_120`` 14 x 5 mm, 32 x 2.5 mm, 14 x 5 mm (an HD120). The
leaf-pair edges are :attr:`MLC.boundaries_mm`, centred on the beam axis, which is what a DICOM
RT Plan's ``LeafPositionBoundaries`` holds (:func:`mlc_from_boundaries` builds a model from
them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .._util import check_positive

__all__ = ["MLC", "get_mlc", "list_mlcs", "mlc_from_boundaries", "BUILTIN_MLCS"]


@dataclass(frozen=True)
class MLC:
    """A multileaf collimator model.

    Parameters
    ----------
    name : str
    leaf_width_mm : float
        Width of one leaf projected to the isocentre plane (mm); with ``leaf_widths_mm`` the
        narrowest (central) width.
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
    leaf_widths_mm : tuple of float, optional
        Width of every pair (mm, isocentre plane), in the order of increasing y, when the leaves
        are not all ``leaf_width_mm`` wide; ``n_pairs`` entries.
    """

    name: str
    leaf_width_mm: float
    n_pairs: int
    max_field_mm: float
    min_gap_mm: float = 0.5
    interdigitation: bool = True
    leaf_speed_mm_s: float = 25.0
    transmission: float = 0.0
    leaf_widths_mm: tuple | None = None

    def __post_init__(self):
        check_positive(f"leaf_width_mm of MLC {self.name!r}", self.leaf_width_mm)
        check_positive(f"max_field_mm of MLC {self.name!r}", self.max_field_mm)
        check_positive(f"leaf_speed_mm_s of MLC {self.name!r}", self.leaf_speed_mm_s)
        check_positive(f"min_gap_mm of MLC {self.name!r}", self.min_gap_mm, allow_zero=True)
        if int(self.n_pairs) != self.n_pairs or self.n_pairs < 1:
            raise ValueError(f"n_pairs of MLC {self.name!r} must be a positive integer, got {self.n_pairs!r}")
        if not 0 <= self.transmission < 1:
            raise ValueError(f"transmission of MLC {self.name!r} must be in [0, 1), got {self.transmission!r}")
        if self.leaf_widths_mm is not None:
            w = check_positive(f"leaf_widths_mm of MLC {self.name!r}", self.leaf_widths_mm)
            if len(w) != self.n_pairs:
                raise ValueError(f"leaf_widths_mm of MLC {self.name!r} has {len(w)} widths for {self.n_pairs} pairs")
            object.__setattr__(self, "leaf_widths_mm", tuple(w))

    @property
    def widths_mm(self) -> np.ndarray:
        """Width of every leaf pair (mm), in the order of increasing y."""
        if self.leaf_widths_mm is None:
            return np.full(int(self.n_pairs), float(self.leaf_width_mm))
        return np.asarray(self.leaf_widths_mm, float)

    @property
    def field_length_mm(self) -> float:
        """Extent across the leaves (the sum of the leaf widths), mm."""
        return float(self.widths_mm.sum())

    @property
    def boundaries_mm(self) -> np.ndarray:
        """The ``n_pairs + 1`` leaf-pair edges along y (mm, isocentre plane), centred on the axis."""
        return np.r_[0.0, np.cumsum(self.widths_mm)] - self.field_length_mm / 2

    def to_dict(self) -> dict:
        return asdict(self)


BUILTIN_MLCS: dict[str, MLC] = {
    m.name: m
    for m in (
        MLC("generic_5mm_60", 5.0, 60, 400.0, 0.5, True, 25.0),
        MLC("generic_10mm_40_noid", 10.0, 40, 400.0, 1.0, False, 20.0),
        MLC("generic_10mm_60", 10.0, 60, 400.0, 0.5, True, 25.0),
        MLC("millennium_120", 5.0, 60, 400.0, 0.5, True, 25.0,
            leaf_widths_mm=(10.0,) * 10 + (5.0,) * 40 + (10.0,) * 10),
        MLC("hd_120", 2.5, 60, 400.0, 0.5, True, 25.0,
            leaf_widths_mm=(5.0,) * 14 + (2.5,) * 32 + (5.0,) * 14),
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


def mlc_from_boundaries(name: str, boundaries_mm, max_field_mm: float = 400.0, min_gap_mm: float = 0.5,
                        interdigitation: bool = True, leaf_speed_mm_s: float = 25.0) -> MLC:
    """An :class:`MLC` with the leaf-pair edges ``boundaries_mm`` (e.g. a DICOM ``LeafPositionBoundaries``).

    Parameters
    ----------
    name : str
    boundaries_mm : sequence of float
        ``n_pairs + 1`` strictly increasing edges (mm, isocentre plane). The model is centred
        on the axis, so edges that are not symmetric about 0 raise ``ValueError`` (use the
        edges themselves, e.g. :class:`rtlab.io.dicom.rtplan.LeafGeometry`, for such MLCs).
    max_field_mm, min_gap_mm, interdigitation, leaf_speed_mm_s
        As for :class:`MLC`.
    """
    b = np.asarray(boundaries_mm, float).ravel()
    if b.size < 2 or not np.all(np.isfinite(b)) or np.any(np.diff(b) <= 0):
        raise ValueError(f"boundaries_mm of MLC {name!r} must be at least 2 strictly increasing finite edges (mm)")
    if abs(b[0] + b[-1]) > 1e-3:
        raise ValueError(f"boundaries_mm of MLC {name!r} run from {b[0]:g} to {b[-1]:g} mm, not centred on the axis")
    w = np.diff(b)
    widths = None if np.allclose(w, w[0], atol=1e-6) else tuple(float(v) for v in w)
    return MLC(name, float(w.min()), int(w.size), float(max_field_mm), float(min_gap_mm), bool(interdigitation),
               float(leaf_speed_mm_s), leaf_widths_mm=widths)
