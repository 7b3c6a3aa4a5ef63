"""SliceViewer: a 2D CT / structure / dose viewer (anywidget, HTML canvas).

The widget holds no algorithm. Python keeps the 3D volumes, cuts the current slice, finds the
structure contours and isodose lines on it with :func:`skimage.measure.find_contours`
(marching squares) and sends them to the browser; the browser-side ES module
(``widgets/slice_viewer.js``) only draws them on a ``<canvas>`` and reports clicks and drags.

What travels to the browser (only the *current* slice, as binary buffers)
-------------------------------------------------------------------------
``ct_slice``
    float32 bytes, row-major, shape ``slice_shape`` (HU).
``dose_slice``
    float32 bytes of the same shape (Gy), or empty when there is no dose.
``contour_points`` / ``contours``
    all polylines of the slice as one float32 buffer of ``(row, col)`` pairs, and a list of
    dicts ``{"kind": "structure"|"isodose", "name", "color", "level" (Gy, isodose only),
    "start", "count"}`` saying which points belong to which polyline. Row/col are continuous
    pixel indices of the displayed slice (pixel centres at integers).

Slice orientation (patient axes as in DICOM: x to the patient's left, y posterior, z superior)
-------------------------------------------------------------------------------------------
========  =====================  ===========================  ======================
name      2D array               rows (top to bottom)         columns (left to right)
========  =====================  ===========================  ======================
axial     ``vol[k, :, :]``       y: anterior -> posterior     x: patient right -> left
coronal   ``vol[::-1, j, :]``    z: superior -> inferior      x: patient right -> left
sagittal  ``vol[::-1, :, i]``    z: superior -> inferior      y: anterior -> posterior
========  =====================  ===========================  ======================
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
from skimage.measure import find_contours

from .._lazy import load
from ..core.geometry import Grid, Structure, StructureSet

# the [lab] extra; SliceViewer's class statement needs both, so importing this module imports them
anywidget = load("anywidget", extra="lab", purpose="rtlab.widgets")
t = load("traitlets", extra="lab", purpose="rtlab.widgets")

__all__ = ["SliceViewer", "ORIENTATIONS", "slice_of", "slice_to_index", "asset_path", "structure_list",
           "largest_target_slice", "volume_of", "rgb_hex"]

ORIENTATIONS = ("axial", "coronal", "sagittal")
_AXIS = {"axial": 0, "coronal": 1, "sagittal": 2}

# A qualitative palette for structures without a colour (RGB 0-1).
PALETTE = (
    (0.90, 0.10, 0.10), (0.10, 0.60, 0.95), (0.20, 0.80, 0.20), (0.95, 0.75, 0.10),
    (0.75, 0.30, 0.90), (0.10, 0.85, 0.85), (1.00, 0.50, 0.00), (0.95, 0.40, 0.70),
)


def asset_path(name: str) -> Path:
    """Locate a browser-side file (ES module or CSS) of rtlab's widgets.

    In a source checkout (also an editable install) the files live in the top-level
    ``widgets/`` folder next to the ``rtlab`` package; in an installed wheel they are shipped
    as ``rtlab/_static/``. The checkout copy wins so that edits show up without rebuilding.

    Parameters
    ----------
    name : str
        File name, e.g. ``"slice_viewer.js"``.

    Returns
    -------
    pathlib.Path
    """
    pkg = Path(__file__).resolve().parents[1]  # .../rtlab
    for cand in (pkg.parent / "widgets" / name, pkg / "_static" / name):
        if cand.is_file():
            return cand
    raise FileNotFoundError(
        f"rtlab widget asset {name!r} not found in {pkg.parent / 'widgets'} (source checkout) "
        f"nor in {pkg / '_static'} (installed wheel); reinstall rtlab"
    )


def slice_of(volume: np.ndarray, orientation: str, index: int) -> np.ndarray:
    """The 2D slice of a ``(z, y, x)`` volume as displayed (see the module's table).

    Parameters
    ----------
    volume : ndarray, shape ``(nz, ny, nx)``
    orientation : {'axial', 'coronal', 'sagittal'}
    index : int
        Slice number along z (axial), y (coronal) or x (sagittal).

    Returns
    -------
    ndarray, C-contiguous, shape ``(ny, nx)``, ``(nz, nx)`` or ``(nz, ny)``.
    """
    _check_orientation(orientation)
    if orientation == "axial":
        s = volume[index, :, :]
    elif orientation == "coronal":
        s = volume[::-1, index, :]
    else:
        s = volume[::-1, :, index]
    return np.ascontiguousarray(s)


def slice_to_index(shape, orientation: str, index: int, row, col) -> np.ndarray:
    """Map continuous (row, col) positions on a displayed slice to voxel indices ``(z, y, x)``.

    Parameters
    ----------
    shape : tuple of int
        Volume shape ``(nz, ny, nx)``.
    orientation : {'axial', 'coronal', 'sagittal'}
    index : int
        The slice number.
    row, col : float or array_like
        Pixel positions (pixel centres at integers).

    Returns
    -------
    ndarray of float, shape ``(..., 3)``: continuous ``(k, j, i)`` voxel indices.
    """
    _check_orientation(orientation)
    row, col = np.broadcast_arrays(np.asarray(row, dtype=float), np.asarray(col, dtype=float))
    nz = shape[0]
    k = np.full(row.shape, float(index))
    if orientation == "axial":
        out = (k, row, col)
    elif orientation == "coronal":
        out = (nz - 1 - row, k, col)
    else:
        out = (nz - 1 - row, col, k)
    return np.stack(out, axis=-1)


def _check_orientation(orientation):
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation must be one of {ORIENTATIONS}, got {orientation!r}")


def structure_list(structures, grid: Grid) -> list[Structure]:
    """Normalise the ``structures`` argument of the widgets to a list of :class:`Structure`.

    Accepts ``None``, a :class:`StructureSet`, an iterable of :class:`Structure`, or a mapping
    ``name -> boolean mask`` (converted with ``kind='oar'``). Every structure must be on ``grid``.
    """
    if structures is None:
        return []
    if isinstance(structures, StructureSet):
        out = list(structures.values())
    elif isinstance(structures, Structure):
        out = [structures]
    elif isinstance(structures, Mapping):
        out = [
            v if isinstance(v, Structure) else Structure(str(k), v, grid, allow_empty=True)
            for k, v in structures.items()
        ]
    elif isinstance(structures, Iterable) and not isinstance(structures, (str, bytes, np.ndarray)):
        out = list(structures)
    else:
        raise TypeError(
            "structures must be a StructureSet, a list of Structure or a dict name -> mask, "
            f"got {type(structures).__name__}"
        )
    for s in out:
        if not isinstance(s, Structure):
            raise TypeError(f"structures must hold rtlab.core.geometry.Structure objects, got {type(s).__name__}")
        grid.require_same(s.grid, f"structure {s.name!r}")
    return out


def largest_target_slice(mask, axis: int = 0) -> int:
    """Index of the slice along ``axis`` (default axial) with the largest section of ``mask``.

    Where a panel opens its slice view: through the widest part of a target.
    """
    m = np.asarray(mask, bool)
    others = tuple(a for a in range(m.ndim) if a != axis)
    return int(np.argmax(m.sum(axis=others)))


def rgb_hex(c) -> str:
    """``'#rrggbb'`` of an RGB colour with components in 0-1."""
    r, g, b = (int(round(255 * float(np.clip(v, 0, 1)))) for v in c[:3])
    return f"#{r:02x}{g:02x}{b:02x}"


def volume_of(name: str, values, grid: Grid) -> np.ndarray:
    """``values`` checked to be a finite numeric array on ``grid``, as float32 (``name`` in messages)."""
    a = np.asarray(values)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a numeric array, got dtype {a.dtype}")
    grid.check_array(name, a)
    a = a.astype(np.float32, copy=False)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf; replace them (np.nan_to_num) before viewing")
    return a


class SliceViewer(anywidget.AnyWidget):
    """Interactive 2D viewer of CT, structure contours, dose colourwash and isodose lines.

    Parameters
    ----------
    ct : ndarray, shape ``grid.shape``
        CT in HU (any real dtype; sent as float32).
    grid : Grid
        The voxel grid of ``ct`` (and of ``dose`` and ``structures``).
    structures : StructureSet or list of Structure or dict name -> mask, optional
        Drawn as contour lines in the structure's colour.
    dose : ndarray, shape ``grid.shape``, optional
        Dose in Gy on the same grid (resample it first: :func:`rtlab.core.geometry.resample`).
    isodose_levels : sequence of float
        Isodose line levels, in percent of ``reference_dose`` (``isodose_unit='%'``, default)
        or in Gy (``isodose_unit='Gy'``).
    isodose_unit : {'%', 'Gy'}
    reference_dose : float, optional
        Gy; 100 % for the isodose levels. Default: the highest target prescription in
        ``structures``, else the maximum of the dose.
    window, level : float
        CT display window width and centre in HU (grey = clip((HU - level) / window + 0.5)).
    orientation : {'axial', 'coronal', 'sagittal'}
    slice_index : int, optional
        Default: the middle slice.
    dose_max : float, optional
        Gy at the top of the colourwash scale. Default: the maximum dose.
    dose_threshold : float, optional
        Gy below which no colourwash is drawn. Default: 10 % of ``dose_max``.
    dose_alpha : float
        Opacity of the colourwash in [0, 1].
    display_size : int
        Size of the longer canvas side in CSS pixels.

    Notes
    -----
    Interaction in the browser: the slider or the mouse wheel changes ``slice_index``; a click
    sets ``selected_voxel``; dragging an isodose line emits an isodose edit (see
    :meth:`on_isodose_edit`); right-drag (or ctrl+drag) changes window (horizontal) and level
    (vertical).
    """

    _esm = asset_path("slice_viewer.js")
    _css = asset_path("slice_viewer.css")

    # --- geometry of the displayed slice
    orientation = t.Enum(ORIENTATIONS, default_value="axial").tag(sync=True)
    slice_index = t.Int(0).tag(sync=True)
    n_slices = t.Int(1).tag(sync=True)
    slice_shape = t.List(t.Int(), default_value=[1, 1]).tag(sync=True)
    pixel_spacing = t.List(t.Float(), default_value=[1.0, 1.0]).tag(sync=True)
    display_size = t.Int(512).tag(sync=True)
    # --- image data of the current slice
    ct_slice = t.Bytes(b"").tag(sync=True)
    dose_slice = t.Bytes(b"").tag(sync=True)
    contour_points = t.Bytes(b"").tag(sync=True)
    contours = t.List(t.Dict()).tag(sync=True)
    frame = t.Dict().tag(sync=True)  # which slice the data above belongs to
    # --- display settings
    window = t.Float(400.0).tag(sync=True)
    level = t.Float(40.0).tag(sync=True)
    dose_visible = t.Bool(True).tag(sync=True)
    dose_max = t.Float(1.0).tag(sync=True)
    dose_threshold = t.Float(0.0).tag(sync=True)
    dose_alpha = t.Float(0.45).tag(sync=True)
    isodose_levels_gy = t.List(t.Float()).tag(sync=True)
    show_contours = t.Bool(True).tag(sync=True)
    show_isodose = t.Bool(True).tag(sync=True)
    # --- results of interaction
    selected_voxel = t.Dict().tag(sync=True)
    last_isodose_edit = t.Dict()

    def __init__(
        self,
        ct,
        grid: Grid,
        structures=None,
        dose=None,
        isodose_levels=(50.0, 80.0, 95.0, 100.0, 107.0),
        isodose_unit: str = "%",
        reference_dose: float | None = None,
        window: float = 400.0,
        level: float = 40.0,
        orientation: str = "axial",
        slice_index: int | None = None,
        dose_max: float | None = None,
        dose_threshold: float | None = None,
        dose_alpha: float = 0.45,
        display_size: int = 512,
    ):
        if not isinstance(grid, Grid):
            raise TypeError(f"grid must be an rtlab.core.geometry.Grid, got {type(grid).__name__}")
        _check_orientation(orientation)
        if isodose_unit not in ("%", "Gy"):
            raise ValueError(f"isodose_unit must be '%' or 'Gy', got {isodose_unit!r}")
        if not (np.isfinite(window) and window > 0):
            raise ValueError(f"window must be a positive width in HU, got {window!r}")
        if not 0 <= dose_alpha <= 1:
            raise ValueError(f"dose_alpha must lie in [0, 1], got {dose_alpha!r}")
        self._grid = grid
        self._ct = volume_of("ct", ct, grid)
        self._structures = structure_list(structures, grid)
        self._dose: np.ndarray | None = None
        self._levels = tuple(float(v) for v in np.atleast_1d(isodose_levels)) if isodose_levels is not None else ()
        if any(not np.isfinite(v) or v <= 0 for v in self._levels):
            raise ValueError(f"isodose_levels must be positive numbers, got {isodose_levels!r}")
        self._unit = isodose_unit
        self._reference = None if reference_dose is None else float(reference_dose)
        if self._reference is not None and not (np.isfinite(self._reference) and self._reference > 0):
            raise ValueError(f"reference_dose must be a positive dose in Gy, got {reference_dose!r}")
        self._fixed_dose_max = dose_max
        self._fixed_threshold = dose_threshold
        self._isodose_callbacks: list[Callable[[dict], None]] = []
        self._in_view_change = False
        self._frames = 0
        super().__init__(
            window=float(window), level=float(level), dose_alpha=float(dose_alpha),
            display_size=int(display_size), orientation=orientation,
        )
        n = grid.shape[_AXIS[orientation]]
        idx = n // 2 if slice_index is None else int(slice_index)
        with self.hold_sync():
            self._set_geometry(orientation, idx)
            self._set_dose(dose)
            self._send_slice()
        self.observe(self._on_view_change, names=["orientation", "slice_index"])
        self.on_msg(self._handle_frontend_msg)

    # ------------------------------------------------------------------ properties
    @property
    def grid(self) -> Grid:
        """The voxel grid."""
        return self._grid

    @property
    def ct(self) -> np.ndarray:
        """The CT volume (float32, HU)."""
        return self._ct

    @property
    def dose(self) -> np.ndarray | None:
        """The displayed dose (float32, Gy) or None."""
        return self._dose

    @property
    def structures(self) -> list[Structure]:
        """The contoured structures."""
        return list(self._structures)

    @property
    def reference_dose(self) -> float | None:
        """Gy at 100 % for the isodose levels (None without dose and prescription)."""
        if self._reference is not None:
            return self._reference
        rx = [s.prescription for s in self._structures if s.is_target and s.prescription]
        if rx:
            return float(max(rx))
        if self._dose is not None and float(self._dose.max()) > 0:
            return float(self._dose.max())
        return None

    # ------------------------------------------------------------------ public API
    def set_dose(self, dose) -> None:
        """Replace the displayed dose (Gy, on ``grid``); ``None`` removes the overlay.

        The colour scale, threshold and isodose levels follow the new dose unless they were
        fixed in the constructor. Only the current slice is sent.
        """
        with self.hold_sync():
            self._set_dose(dose)
            self._send_slice()

    def set_ct(self, ct) -> None:
        """Replace the CT volume (HU, on ``grid``)."""
        self._ct = volume_of("ct", ct, self._grid)
        self._send_slice()

    def set_structures(self, structures) -> None:
        """Replace the contoured structures (same forms as the constructor accepts)."""
        self._structures = structure_list(structures, self._grid)
        with self.hold_sync():
            self.isodose_levels_gy = self._levels_gy()
            self._send_slice()

    def set_isodose_levels(self, levels, unit: str | None = None) -> None:
        """Change the isodose levels (``unit`` '%' of the reference dose or 'Gy')."""
        if unit is not None:
            if unit not in ("%", "Gy"):
                raise ValueError(f"unit must be '%' or 'Gy', got {unit!r}")
            self._unit = unit
        self._levels = tuple(float(v) for v in np.atleast_1d(levels))
        if any(not np.isfinite(v) or v <= 0 for v in self._levels):
            raise ValueError(f"levels must be positive numbers, got {levels!r}")
        with self.hold_sync():
            self.isodose_levels_gy = self._levels_gy()
            self._send_slice()

    def on_isodose_edit(self, callback: Callable[[dict], None], remove: bool = False) -> None:
        """Register ``callback(edit)`` for isodose-line drags in the browser.

        ``edit`` is the dict also stored in :attr:`last_isodose_edit`: ``level_gy``,
        ``orientation``, ``slice_index``, ``path_index`` (list of continuous voxel indices
        ``(z, y, x)``) and ``path_world_mm`` (list of world points ``(z, y, x)`` in mm).
        """
        if remove:
            self._isodose_callbacks.remove(callback)
        else:
            self._isodose_callbacks.append(callback)

    def current_slices(self) -> dict[str, np.ndarray | None]:
        """The 2D arrays now displayed: ``{'ct': ..., 'dose': ... or None}``."""
        o, k = self.orientation, self.slice_index
        return {
            "ct": slice_of(self._ct, o, k),
            "dose": None if self._dose is None else slice_of(self._dose, o, k),
        }

    def select(self, row: float, col: float) -> dict:
        """Select the voxel under pixel ``(row, col)`` of the current slice (as a click does)."""
        self._handle_frontend_msg(self, {"type": "click", "row": row, "col": col}, [])
        return self.selected_voxel

    # ------------------------------------------------------------------ internals
    def _levels_gy(self) -> list[float]:
        if self._unit == "Gy":
            return list(self._levels)
        ref = self.reference_dose
        return [] if ref is None else [lv / 100.0 * ref for lv in self._levels]

    def _set_geometry(self, orientation: str, index: int) -> None:
        ax = _AXIS[orientation]
        n = self._grid.shape[ax]
        sp = self._grid.spacing
        shape2d = [d for a, d in enumerate(self._grid.shape) if a != ax]
        spacing2d = [d for a, d in enumerate(sp) if a != ax]
        self.n_slices = n
        self.slice_shape = shape2d
        self.pixel_spacing = spacing2d
        self.slice_index = int(np.clip(index, 0, n - 1))

    def _set_dose(self, dose) -> None:
        if dose is None:
            self._dose = None
        else:
            self._dose = volume_of("dose", dose, self._grid)
            if float(self._dose.min()) < 0:
                raise ValueError("dose contains negative values; dose must be >= 0 Gy")
        dmax = float(self._dose.max()) if self._dose is not None else 0.0
        top = self._fixed_dose_max if self._fixed_dose_max is not None else (dmax if dmax > 0 else 1.0)
        self.dose_max = float(top)
        self.dose_threshold = float(
            self._fixed_threshold if self._fixed_threshold is not None else 0.1 * self.dose_max
        )
        self.isodose_levels_gy = self._levels_gy()

    def notify_change(self, change):
        # Send a slice change together with the new slice's data (one message, one redraw).
        if change.get("name") in ("slice_index", "orientation") and not self._in_view_change:
            with self.hold_sync():
                super().notify_change(change)
        else:
            super().notify_change(change)

    def _on_view_change(self, change) -> None:
        if self._in_view_change:
            return
        self._in_view_change = True
        try:
            with self.hold_sync():
                if change["name"] == "orientation":
                    o = change["new"]
                    self._set_geometry(o, self._grid.shape[_AXIS[o]] // 2)
                else:
                    self.slice_index = int(np.clip(change["new"], 0, self.n_slices - 1))
                self._send_slice()
        finally:
            self._in_view_change = False

    def _send_slice(self) -> None:
        o, k = self.orientation, self.slice_index
        ct2 = slice_of(self._ct, o, k)
        polylines: list[np.ndarray] = []
        meta: list[dict] = []

        def add(kind, name, color, paths, level=None):
            for p in paths:
                if len(p) < 2:
                    continue
                d = {"kind": kind, "name": name, "color": color, "start": sum(len(q) for q in polylines), "count": len(p)}
                if level is not None:
                    d["level"] = float(level)
                polylines.append(p.astype(np.float32))
                meta.append(d)

        for i, s in enumerate(self._structures):
            m = slice_of(s.mask, o, k)
            if not m.any():
                continue
            # pad so that contours touching the border close; shift back by one pixel
            paths = [p - 1.0 for p in find_contours(np.pad(m, 1).astype(np.float32), 0.5)]
            color = rgb_hex(s.color if s.color is not None else PALETTE[i % len(PALETTE)])
            add("structure", s.name, color, paths)
        dose2 = None
        if self._dose is not None:
            dose2 = slice_of(self._dose, o, k)
            for lv in self.isodose_levels_gy:
                if dose2.max() >= lv:
                    add("isodose", f"{lv:.4g} Gy", "", find_contours(dose2, lv), level=lv)
        pts = np.concatenate(polylines) if polylines else np.zeros((0, 2), np.float32)
        self.ct_slice = ct2.astype(np.float32).tobytes()
        self.dose_slice = b"" if dose2 is None else dose2.astype(np.float32).tobytes()
        self.contour_points = np.ascontiguousarray(pts, dtype=np.float32).tobytes()
        self.contours = meta
        self._frames += 1
        self.frame = {"orientation": o, "slice_index": k, "serial": self._frames}

    def _handle_frontend_msg(self, _widget, content, buffers) -> None:
        """Handle a custom message from the browser (``{"type": "click"|"isodose_edit", ...}``)."""
        if not isinstance(content, Mapping):
            raise TypeError(f"widget message must be a dict, got {type(content).__name__}")
        kind = content.get("type")
        o = content.get("orientation", self.orientation)
        k = int(content.get("slice_index", self.slice_index))
        _check_orientation(o)
        if kind == "click":
            try:
                row, col = float(content["row"]), float(content["col"])
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"click message needs numeric 'row' and 'col', got {dict(content)!r}") from None
            idx = np.rint(slice_to_index(self._grid.shape, o, k, row, col)).astype(int)
            if np.any(idx < 0) or np.any(idx >= np.asarray(self._grid.shape)):
                return  # a click outside the image selects nothing
            zyx = tuple(int(v) for v in idx)
            self.selected_voxel = {
                "index": list(zyx),
                "world_mm": [float(v) for v in self._grid.index_to_world(zyx)],
                "dose_gy": None if self._dose is None else float(self._dose[zyx]),
                "hu": float(self._ct[zyx]),
                "orientation": o,
                "slice_index": k,
                "row": int(round(row)),
                "col": int(round(col)),
            }
        elif kind == "isodose_edit":
            path = np.asarray(content.get("path", []), dtype=float)
            if path.ndim != 2 or path.shape[1] != 2 or len(path) < 2:
                raise ValueError("isodose_edit message needs 'path': a list of at least two [row, col] pairs")
            level = float(content["level"])
            idx = slice_to_index(self._grid.shape, o, k, path[:, 0], path[:, 1])
            edit = {
                "level_gy": level,
                "orientation": o,
                "slice_index": k,
                "path_index": [tuple(float(v) for v in p) for p in idx],
                "path_world_mm": [tuple(float(v) for v in p) for p in self._grid.index_to_world(idx)],
            }
            self.last_isodose_edit = edit
            for cb in list(self._isodose_callbacks):
                cb(edit)
