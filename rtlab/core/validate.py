"""The limits rtlab puts on input, and the one set of checks that enforces them.

Readers (:mod:`rtlab.io`), the core objects (:class:`~rtlab.core.geometry.Grid`,
:class:`~rtlab.core.case.Case`), the evaluation (:mod:`rtlab.evaluate`), the planners and the
command line all call these functions, so a value is judged the same way whether it comes from
a file, the command line or Python. Every check raises ``ValueError`` (``TypeError`` for a wrong
type) with a message that names the argument or file, the value, the limit and the fix.
``docs/security.md`` lists the limits.

Limits (module constants; the first two can be raised through the environment)
--------------------------------------------------------------------------------
:data:`MAX_VOXELS`
    Voxels of one volume (a CT, a dose, a structure mask, a phantom, a dose grid): 2**27 =
    134,217,728 (512 x 512 x 512). Environment variable ``RTLAB_MAX_VOXELS``. Checked from the
    header (``.npy`` header, DICOM Rows x Columns x slices, matRad cube shape, phantom extent /
    spacing) before anything is allocated.
:data:`MAX_DECODE_BYTES`
    Bytes one input file may decode to (all its arrays together, and the structure masks it
    implies): 4 GiB. Environment variable ``RTLAB_MAX_DECODE_BYTES``. Checked from dataset
    shapes and dtypes before reading.
:data:`MAX_REFERENCES`, :data:`MAX_NESTING`
    Object references one MATLAB v7.3 file may hold (1,000,000) and how deep cells and structs
    may nest (32 levels).
:data:`MAX_BIXELS`
    Bixels of one beam's fluence grid: 2**20 = 1,048,576 (a 400 x 400 mm field at 0.4 mm
    bixels); checked from the target's projection before the grid is allocated.
:data:`MIN_SPACING_MM`, :data:`MAX_SPACING_MM`
    A grid spacing is finite and between 0.01 mm and 1000 mm.
:data:`HU_RANGE`
    CT numbers lie in [-33792, 64511] HU: what a 16-bit CT pixel (signed or unsigned) can hold
    after the usual rescale intercept of -1024 HU (air is -1000, bone ~ 2000, metal in an
    extended-range CT ~ 30000). Anything outside is not a CT in HU.
:data:`MAX_DENSITY`
    Relative electron density (water = 1) lies in [0, 30] (gold, the densest implant metal,
    is about 14).
:data:`MAX_DOSE_GY`
    A dose is finite, non-negative, not boolean, and at most 1000 Gy (a larger value is a
    unit mistake - cGy or mGy - or garbage).
:data:`GK_MIN_ISODOSE_PCT`, :data:`GK_MAX_BEAM_ON_MIN`
    A Gamma-Knife plan prescribed below the 25 % isodose, or needing more than 180 minutes of
    beam-on time, is reported with a warning (:func:`gk_plausibility`).
:data:`MAX_WORKERS_PER_CORE`
    ``rtlab batch`` starts at most 4 local worker processes per CPU core.
"""

from __future__ import annotations

import math
import os

import numpy as np

from .._util import check_finite

__all__ = [
    "MAX_VOXELS", "MAX_DECODE_BYTES", "MAX_BIXELS", "MAX_REFERENCES", "MAX_NESTING", "MIN_SPACING_MM", "MAX_SPACING_MM",
    "HU_RANGE", "MAX_DENSITY", "MAX_DOSE_GY", "GK_MIN_ISODOSE_PCT", "GK_MAX_BEAM_ON_MIN", "MAX_WORKERS_PER_CORE",
    "max_voxels", "max_decode_bytes", "cpu_count", "max_workers",
    "check_voxels", "check_bixels", "check_decode_bytes", "check_spacing", "check_dose", "check_hu", "check_density", "check_angles",
    "gk_plausibility", "PlausibilityWarning",
]

#: Default voxel limit of one volume (512**3); ``RTLAB_MAX_VOXELS`` overrides it.
MAX_VOXELS = 2 ** 27
#: Default limit on what one input file decodes to (bytes); ``RTLAB_MAX_DECODE_BYTES`` overrides it.
MAX_DECODE_BYTES = 4 * 2 ** 30
#: Bixels of one beam.
MAX_BIXELS = 2 ** 20
#: Object references one MATLAB v7.3 (HDF5) file may hold.
MAX_REFERENCES = 1_000_000
#: Nesting depth of cells and structs in a MATLAB file.
MAX_NESTING = 32
#: Smallest and largest grid spacing (mm).
MIN_SPACING_MM = 0.01
MAX_SPACING_MM = 1000.0
#: Plausible CT numbers (HU): a 16-bit pixel (signed or unsigned) with the usual intercept of -1024 HU.
HU_RANGE = (-32768.0 - 1024.0, 65535.0 - 1024.0)
#: Largest plausible relative electron density (water = 1; gold is about 14).
MAX_DENSITY = 30.0
#: Largest plausible dose (Gy).
MAX_DOSE_GY = 1000.0
#: Gamma-Knife plausibility: lowest prescription isodose (% of the maximum) and longest beam-on (min).
GK_MIN_ISODOSE_PCT = 25.0
GK_MAX_BEAM_ON_MIN = 180.0
#: Local batch workers per CPU core.
MAX_WORKERS_PER_CORE = 4


class PlausibilityWarning(UserWarning):
    """A result that computes but lies outside practice (e.g. :func:`gk_plausibility`)."""


def _env_limit(var: str, default: int) -> int:
    text = os.environ.get(var)
    if text is None or not text.strip():
        return int(default)
    try:
        v = int(float(text))
    except ValueError:
        raise ValueError(f"environment variable {var}={text!r} must be a positive integer") from None
    if v < 1:
        raise ValueError(f"environment variable {var}={text!r} must be a positive integer")
    return v


def max_voxels() -> int:
    """The voxel limit of one volume: ``RTLAB_MAX_VOXELS`` or :data:`MAX_VOXELS`."""
    return _env_limit("RTLAB_MAX_VOXELS", MAX_VOXELS)


def max_decode_bytes() -> int:
    """What one input file may decode to (bytes): ``RTLAB_MAX_DECODE_BYTES`` or :data:`MAX_DECODE_BYTES`."""
    return _env_limit("RTLAB_MAX_DECODE_BYTES", MAX_DECODE_BYTES)


def cpu_count() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def max_workers() -> int:
    """Most local batch worker processes: :data:`MAX_WORKERS_PER_CORE` x :func:`cpu_count`."""
    return MAX_WORKERS_PER_CORE * cpu_count()


def _size(n: int) -> str:
    for unit, f in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= f:
            return f"{n / f:.3g} {unit}"
    return f"{n} B"


def check_voxels(shape, what: str) -> int:
    """Number of voxels of ``shape``; ``ValueError`` above :func:`max_voxels` (exact integers, no overflow).

    Parameters
    ----------
    shape : sequence of int
        The volume's shape as declared (a header, a computed grid).
    what : str
        What the volume is, for the message (e.g. ``"CT.npy: array 'dose'"``).
    """
    dims = [int(s) for s in shape]
    n = math.prod(dims)
    limit = max_voxels()
    if n > limit:
        raise ValueError(
            f"{what}: {' x '.join(map(str, dims))} = {n:,} voxels is more than rtlab's volume limit of "
            f"{limit:,} voxels (RTLAB_MAX_VOXELS, see docs/security.md); use a coarser spacing or a smaller "
            "volume, or raise the limit if this machine has the memory")
    return n


def check_bixels(shape, bixel_mm: float, what: str = "a beam") -> int:
    """Number of bixels of a beam's ``(rows, columns)`` grid; ``ValueError`` above :data:`MAX_BIXELS`."""
    n = math.prod(int(s) for s in shape)
    if n > MAX_BIXELS:
        raise ValueError(
            f"{what}: {' x '.join(str(int(s)) for s in shape)} = {n:,} bixels of {bixel_mm:g} mm is more than rtlab's "
            f"limit of {MAX_BIXELS:,} bixels per beam (see docs/security.md); use a larger bixel size (bixel_mm)")
    return n


def check_decode_bytes(nbytes: int, what: str) -> int:
    """``nbytes`` if it is within :func:`max_decode_bytes`, else ``ValueError`` naming the limit."""
    n = int(nbytes)
    limit = max_decode_bytes()
    if n > limit:
        raise ValueError(
            f"{what} would decode to {_size(n)} ({n:,} bytes), more than rtlab's limit of {_size(limit)} per "
            "input file (RTLAB_MAX_DECODE_BYTES, see docs/security.md); the file is damaged or hostile, or "
            "raise the limit if it really is that large")
    return n


def check_spacing(name: str, spacing, n: int | None = None) -> tuple[float, ...]:
    """Grid spacing (mm) as floats: finite and within [:data:`MIN_SPACING_MM`, :data:`MAX_SPACING_MM`].

    Parameters
    ----------
    name : str
        The argument's name, for the message.
    spacing : float or sequence of float
    n : int, optional
        Required count (1 is broadcast to ``n``).
    """
    if isinstance(spacing, (str, bytes)) or isinstance(spacing, (bool, np.bool_)):
        raise TypeError(f"{name} must be a number or a sequence of numbers in mm, got {spacing!r}")
    try:
        vals = tuple(float(v) for v in np.atleast_1d(np.asarray(spacing, dtype=object)).ravel())
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number or a sequence of numbers in mm, got {spacing!r}") from None
    if not vals:
        raise ValueError(f"{name} is empty; give a voxel size in mm")
    for v in vals:
        if not math.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must be positive and finite (mm), got {spacing!r}")
        if v < MIN_SPACING_MM or v > MAX_SPACING_MM:
            raise ValueError(
                f"{name} = {v:g} mm is outside rtlab's range for a grid spacing, {MIN_SPACING_MM:g} .. "
                f"{MAX_SPACING_MM:g} mm (see docs/security.md); give the voxel size in mm")
    if n is not None:
        if len(vals) == 1:
            vals = vals * n
        if len(vals) != n:
            raise ValueError(f"{name} must be one number or {n} numbers (mm), got {spacing!r}")
    return vals


def check_dose(name: str, dose, allow_negative: bool = False, max_gy: float | None = MAX_DOSE_GY) -> np.ndarray:
    """``np.asarray(dose)`` after checking it is a plausible dose in Gy.

    A dose must be numeric and not boolean (a mask passed by mistake), finite, non-negative
    (unless ``allow_negative``, e.g. a dose difference) and at most ``max_gy``
    (:data:`MAX_DOSE_GY`; ``None`` skips the plausibility cap, as the metric functions do, which
    are mathematics on any non-negative array - the scoring entry points and the readers apply it).

    Raises
    ------
    TypeError
        Boolean or non-numeric dtype.
    ValueError
        NaN/inf, negative values, or values above :data:`MAX_DOSE_GY`.
    """
    a = np.asarray(dose)
    if a.dtype.kind == "b":
        raise TypeError(f"{name} is a boolean array (a structure mask?); a dose is a numeric array in Gy")
    if a.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be a numeric array in Gy, got dtype {a.dtype}")
    if a.size == 0:
        return a
    check_finite(name, a)
    lo, hi = float(a.min()), float(a.max())
    if lo < 0 and not allow_negative:
        raise ValueError(f"{name} has negative values (min {lo:g} Gy); a dose is >= 0 - clip it "
                         "(np.clip(dose, 0, None)) or fix the computation that produced it")
    if max_gy is not None and max(hi, -lo) > max_gy:
        raise ValueError(
            f"{name} reaches {max(hi, -lo):g} Gy, more than rtlab's plausible maximum of {max_gy:g} Gy "
            "(see docs/security.md); is it in cGy or mGy? Convert it to Gy")
    return a


def _numeric_range(name: str, values, what: str) -> tuple[np.ndarray, float, float]:
    """``(array, min, max)`` of a finite numeric array (min = max = 0 when it is empty)."""
    a = np.asarray(values)
    if a.dtype.kind == "b" or a.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be a numeric array of {what}, got dtype {a.dtype}")
    if a.size == 0:
        return a, 0.0, 0.0
    check_finite(name, a)
    return a, float(a.min()), float(a.max())


def check_hu(name: str, ct) -> np.ndarray:
    """``np.asarray(ct)`` after checking it holds finite CT numbers within :data:`HU_RANGE`."""
    a, lo, hi = _numeric_range(name, ct, "CT numbers (HU)")
    if a.size and (lo < HU_RANGE[0] or hi > HU_RANGE[1]):
        raise ValueError(
            f"{name} spans {lo:g} .. {hi:g} HU, outside the plausible CT range {HU_RANGE[0]:g} .. {HU_RANGE[1]:g} HU "
            "(see docs/security.md); is it in HU? (relative electron density goes to Case(density=...))")
    return a


def check_density(name: str, density) -> np.ndarray:
    """``np.asarray(density)`` after checking it is finite and within [0, :data:`MAX_DENSITY`]."""
    a, lo, hi = _numeric_range(name, density, "relative electron density")
    if a.size and (lo < 0 or hi > MAX_DENSITY):
        raise ValueError(
            f"{name} spans {lo:g} .. {hi:g}, outside the plausible relative electron density 0 .. {MAX_DENSITY:g} "
            "(water = 1; see docs/security.md); is it a density relative to water?")
    return a


def check_angles(name: str, angles) -> list[float]:
    """Gantry angles (degrees) as a non-empty list of finite floats."""
    if isinstance(angles, (str, bytes)):
        raise TypeError(f"{name} must be a sequence of numbers (degrees), got the string {angles!r}")
    try:
        vals = [float(v) for v in np.atleast_1d(np.asarray(angles, dtype=object)).ravel()]
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be numbers (degrees), got {angles!r}") from None
    if not vals:
        raise ValueError(f"{name} is empty; give gantry angles in degrees, e.g. 0,72,144,216,288")
    bad = [v for v in vals if not math.isfinite(v)]
    if bad:
        raise ValueError(f"{name} must be finite numbers (degrees), got {bad[0]!r}")
    return vals


def gk_plausibility(isodose_pct: float, beam_on_min: float, target_cc: float | None = None) -> list[str]:
    """Warnings (strings) for a Gamma-Knife plan outside clinical practice; empty when plausible.

    A prescription isodose below :data:`GK_MIN_ISODOSE_PCT` % of the maximum means a very
    inhomogeneous plan (the target is hard to cover with the shots); a beam-on time above
    :data:`GK_MAX_BEAM_ON_MIN` minutes is beyond any treatment session. Both usually mean the
    target is too large or the wrong shape for Gamma-Knife radiosurgery.
    """
    out = []
    size = f" for a {target_cc:.1f} cc target" if target_cc is not None else ""
    hint = "; Gamma-Knife radiosurgery suits small targets (typically below ~ 15 cc)"
    if math.isfinite(isodose_pct) and isodose_pct < GK_MIN_ISODOSE_PCT:
        out.append(f"the prescription lies on the {isodose_pct:.1f} % isodose{size}, below the "
                   f"{GK_MIN_ISODOSE_PCT:g} % that Gamma-Knife plans use (usually 40-60 %){hint}")
    if not math.isfinite(beam_on_min) or beam_on_min > GK_MAX_BEAM_ON_MIN:
        out.append(f"the plan needs {beam_on_min:.0f} minutes of beam-on time{size}, more than "
                   f"{GK_MAX_BEAM_ON_MIN:g} minutes{hint}")
    return out
