"""View3D: structure surfaces, dose isosurfaces and beam axes in 3D (ipyvolume 0.6.3).

The geometry (meshes in world mm, beam source positions) is computed here with plain numpy and
:func:`skimage.measure.marching_cubes`, independent of any display; :class:`View3D` then hands
it to an ``ipyvolume.Figure``. ipyvolume is imported lazily, only in :meth:`View3D.figure`, and
nowhere else in rtlab.

Display axes: the figure shows world ``x`` (patient's left) to the right, world ``z``
(superior) up and world ``-y`` (anterior) towards the viewer, i.e. the default camera looks at
the patient from the front (a rotation of the DICOM axes, not a mirror image). Display
coordinates are in mm.

Notes
-----
``ipyvolume.show()`` and the pylab-style helpers build a side panel that is broken on
ipywidgets 8; :class:`View3D` displays the ``Figure`` widget itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
from skimage.measure import marching_cubes

from .._lazy import load
from ..core.geometry import Grid
from .slice_viewer import PALETTE, rgb_hex, structure_list, volume_of

ipv = load("ipyvolume", extra="lab", purpose="rtlab's 3D view (View3D.figure)")

__all__ = ["Mesh", "View3D", "structure_mesh", "isodose_mesh", "beam_source", "to_display", "enclosed_volume"]


@dataclass
class Mesh:
    """A triangle mesh in world coordinates.

    Attributes
    ----------
    vertices : ndarray, shape ``(n, 3)``
        World positions ``(z, y, x)`` in mm.
    faces : ndarray of int, shape ``(m, 3)``
        Vertex indices of each triangle.
    name : str
    color : str
        CSS colour (``#rrggbb``).
    kind : {'structure', 'isodose'}
    level : float or None
        Isodose level in Gy (isodose meshes).
    """

    vertices: np.ndarray
    faces: np.ndarray
    name: str = ""
    color: str = "#ff0000"
    kind: str = "structure"
    level: float | None = None

    @property
    def volume_cc(self) -> float:
        """Volume enclosed by the (closed) mesh in cm^3; see :func:`enclosed_volume`."""
        return enclosed_volume(self.vertices, self.faces) / 1000.0


def enclosed_volume(vertices, faces) -> float:
    """Volume in mm^3 enclosed by a closed, consistently oriented triangle mesh.

    The divergence theorem: ``V = |sum_f v0 . (v1 x v2)| / 6`` over the triangles
    ``(v0, v1, v2)`` (the signed volumes of the tetrahedra from a common apex, here the
    vertices' mean, to each face). Valid for several closed components with the same
    orientation, as :func:`skimage.measure.marching_cubes` produces them.

    Parameters
    ----------
    vertices : ndarray, shape ``(n, 3)``
        mm.
    faces : ndarray of int, shape ``(m, 3)``

    Returns
    -------
    float
        mm^3; 0 for an empty mesh.

    Raises
    ------
    ValueError
        The mesh is not closed (some edge does not belong to exactly two triangles), so it
        encloses no volume.
    """
    v = np.asarray(vertices, dtype=float)
    f = np.asarray(faces, dtype=np.int64)
    if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"vertices must be (n, 3) and faces (m, 3), got {v.shape} and {f.shape}")
    if len(f) == 0:
        return 0.0
    edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    if np.any(counts != 2):
        raise ValueError(f"the mesh is not closed ({int(np.sum(counts != 2))} edges not shared by exactly "
                         "two triangles); it encloses no volume")
    c = v - v.mean(axis=0)
    a, b, d = c[f[:, 0]], c[f[:, 1]], c[f[:, 2]]
    return float(abs(np.einsum("ij,ij->i", a, np.cross(b, d)).sum()) / 6.0)


def _isosurface(values: np.ndarray, grid: Grid, level: float, step_size: int, pad_value: float):
    """Marching cubes of ``values`` at ``level`` on the box around ``values >= level``.

    The box is padded by one voxel of ``pad_value`` so that surfaces touching the grid border
    close. Returns world-mm vertices ``(z, y, x)`` and faces.
    """
    inside = values >= level
    if not inside.any():
        return np.zeros((0, 3)), np.zeros((0, 3), np.int64)
    idx = np.argwhere(inside)
    lo = np.maximum(idx.min(0) - 1, 0)
    hi = np.minimum(idx.max(0) + 2, np.asarray(values.shape))
    box = values[tuple(slice(a, b) for a, b in zip(lo, hi))].astype(np.float32)
    box = np.pad(box, 1, constant_values=pad_value)
    verts, faces, _normals, _vals = marching_cubes(
        box, level=float(level), spacing=grid.spacing, step_size=int(step_size), allow_degenerate=False
    )
    # padded-box voxel 0 is grid voxel lo - 1
    offset = np.asarray(grid.origin) + (lo - 1) * np.asarray(grid.spacing)
    return verts.astype(np.float64) + offset, faces.astype(np.int64)


def structure_mesh(mask, grid: Grid, step_size: int = 1, name: str = "", color: str = "#ff0000") -> Mesh:
    """Surface of a binary mask (the 0.5 level between inside and outside voxel centres).

    Parameters
    ----------
    mask : ndarray of bool, shape ``grid.shape``
    grid : Grid
        Gives the spacing (anisotropic allowed) and origin; vertices are in world mm.
    step_size : int
        Marching-cubes step in voxels (>1 gives coarser, faster meshes).
    name, color : str

    Returns
    -------
    Mesh
        Each vertex lies on the segment between an inside and an outside voxel centre (at its
        midpoint for ``step_size=1``).
    """
    m = grid.check_array("mask", mask)
    if m.dtype != bool:
        m = m != 0
    if not m.any():
        raise ValueError(f"mask {name!r} is empty; there is no surface to draw")
    v, f = _isosurface(m.astype(np.float32), grid, 0.5, step_size, 0.0)
    return Mesh(v, f, name=name, color=color, kind="structure")


def isodose_mesh(dose, grid: Grid, level: float, step_size: int = 1, color: str | None = None) -> Mesh:
    """Isosurface of a dose distribution at ``level`` Gy (linear interpolation between voxels).

    Parameters
    ----------
    dose : ndarray, shape ``grid.shape``
        Gy.
    grid : Grid
    level : float
        Gy; must be above the minimum dose.
    step_size : int
    color : str, optional
        Default: the jet-like colour of ``level / max(dose)`` (as in :class:`SliceViewer`).

    Returns
    -------
    Mesh
        Empty (no vertices) when no voxel reaches ``level``.
    """
    d = volume_of("dose", dose, grid)
    level = float(level)
    if not np.isfinite(level) or level <= float(d.min()):
        raise ValueError(f"level must be a dose in Gy above the minimum dose {float(d.min()):.3g}, got {level!r}")
    v, f = _isosurface(d, grid, level, step_size, float(d.min()))
    if color is None:
        color = _jet_hex(level / max(float(d.max()), 1e-12))
    return Mesh(v, f, name=f"{level:.4g} Gy", color=color, kind="isodose", level=level)


def _jet_hex(t: float) -> str:
    """The colour of the SliceViewer's jet-like colour map at ``t`` in [0, 1]."""
    t = float(np.clip(t, 0, 1))
    c = [np.clip(1.5 - abs(4 * t - a), 0, 1) for a in (3, 2, 1)]
    return rgb_hex(c)


def beam_source(gantry_deg: float, couch_deg: float, isocenter, sad_mm: float = 1000.0) -> np.ndarray:
    """World position ``(z, y, x)`` in mm of the radiation source (IEC 61217).

    Head-first supine patient, DICOM patient axes. In the IEC fixed system (X_f to the right
    seen from the couch foot, Y_f towards the gantry, Z_f up) the source sits at
    ``SAD * (sin g, 0, cos g)``; the couch (and patient) rotate by ``c`` counter-clockwise about
    Z_f seen from above, so in patient axes (x = X_f, y = -Z_f, z = Y_f at couch 0) the source
    is at::

        x = SAD sin g cos c,   y = -SAD cos g,   z = -SAD sin g sin c

    relative to the isocentre. Gantry 0: source at -y (anterior); gantry 90: +x (patient's
    left); gantry 90 with couch 90: -z (inferior).

    Parameters
    ----------
    gantry_deg, couch_deg : float
        Degrees.
    isocenter : sequence of 3 float
        ``(z, y, x)`` in mm.
    sad_mm : float
        Source-axis distance in mm.
    """
    iso = np.asarray(isocenter, dtype=float)
    if iso.shape != (3,) or not np.all(np.isfinite(iso)):
        raise ValueError(f"isocenter must be three finite numbers (z, y, x) in mm, got {isocenter!r}")
    if not (np.isfinite(sad_mm) and sad_mm > 0):
        raise ValueError(f"sad_mm must be a positive distance in mm, got {sad_mm!r}")
    g, c = np.deg2rad(float(gantry_deg)), np.deg2rad(float(couch_deg))
    d = np.array([-np.sin(g) * np.sin(c), -np.cos(g), np.sin(g) * np.cos(c)])
    return iso + sad_mm * d


def to_display(points_zyx) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World ``(z, y, x)`` mm -> ipyvolume display axes ``(x, y, z) = (x, z, -y)``."""
    p = np.asarray(points_zyx, dtype=float).reshape(-1, 3)
    return p[:, 2].copy(), p[:, 0].copy(), -p[:, 1]


def _beam_list(beams, grid: Grid):
    out = []
    for b in beams or ():
        if hasattr(b, "gantry"):  # rtlab.core.case.BeamSpec
            iso = b.isocenter if b.isocenter is not None else grid.center
            out.append((float(b.gantry), float(b.couch), tuple(float(v) for v in iso)))
            continue
        try:
            g, c, iso = b
            out.append((float(g), float(c), tuple(float(v) for v in iso)))
        except (TypeError, ValueError):
            raise ValueError(
                f"each beam must be (gantry_deg, couch_deg, (z, y, x) isocentre mm) or a BeamSpec, got {b!r}"
            ) from None
    return out


class View3D:
    """3D scene of structures, dose isosurfaces and beam axes (an ipyvolume figure).

    Parameters
    ----------
    grid : Grid
    structures : StructureSet or list of Structure or dict name -> mask, optional
    dose : ndarray, shape ``grid.shape``, optional
        Gy.
    dose_levels : sequence of float
        Isodose surface levels in Gy.
    beams : iterable, optional
        ``(gantry_deg, couch_deg, isocenter_zyx_mm)`` tuples or :class:`rtlab.core.case.BeamSpec`.
    sad_mm : float
        Source-axis distance (mm) for the beam axes.
    step_size : int
        Marching-cubes step in voxels.
    width, height : int
        Figure size in pixels.

    Attributes
    ----------
    meshes : list of Mesh
        Structure and isodose surfaces in world mm.
    beam_lines : list of (source_zyx, isocenter_zyx)
        World mm. The figure draws each axis from the isocentre towards the source, cut at
        the edge of the displayed box (the full line would dwarf the patient).

    Examples
    --------
    >>> View3D(grid, structures, dose=dose, dose_levels=[30, 57], beams=[(0, 0, iso)])  # doctest: +SKIP
    """

    def __init__(
        self,
        grid: Grid,
        structures=None,
        dose=None,
        dose_levels: Iterable[float] = (),
        beams=None,
        sad_mm: float = 1000.0,
        step_size: int = 1,
        width: int = 500,
        height: int = 400,
    ):
        if not isinstance(grid, Grid):
            raise TypeError(f"grid must be an rtlab.core.geometry.Grid, got {type(grid).__name__}")
        if int(step_size) < 1:
            raise ValueError(f"step_size must be a positive number of voxels, got {step_size!r}")
        self.grid = grid
        self.step_size = int(step_size)
        self.sad_mm = float(sad_mm)
        self.width, self.height = int(width), int(height)
        self.structure_meshes = [
            structure_mesh(s.mask, grid, self.step_size, s.name,
                           rgb_hex(s.color if s.color is not None else PALETTE[i % len(PALETTE)]))
            for i, s in enumerate(structure_list(structures, grid)) if s.mask.any()
        ]
        self.dose_levels = [float(v) for v in dose_levels]
        self.dose_meshes: list[Mesh] = []
        self._dose = None
        self.beams = _beam_list(beams, grid)
        self.beam_lines = [
            (beam_source(g, c, iso, self.sad_mm), np.asarray(iso, float)) for g, c, iso in self.beams
        ]
        self._figure = None
        self._dose_widgets: list = []
        if dose is not None:
            self.set_dose(dose)

    @property
    def meshes(self) -> list[Mesh]:
        """All meshes: structures, then isodose surfaces."""
        return self.structure_meshes + self.dose_meshes

    def set_dose(self, dose, levels: Iterable[float] | None = None) -> None:
        """Recompute the isodose surfaces for a new dose (Gy); updates a displayed figure."""
        if levels is not None:
            self.dose_levels = [float(v) for v in levels]
        if dose is None:
            self._dose, self.dose_meshes = None, []
        else:
            self._dose = volume_of("dose", dose, self.grid)
            dmin = float(self._dose.min())
            self.dose_meshes = [
                isodose_mesh(self._dose, self.grid, lv, self.step_size)
                for lv in self.dose_levels if lv > dmin
            ]
        if self._figure is not None:
            fig = self._figure
            fig.meshes = [m for m in fig.meshes if m not in self._dose_widgets]
            self._dose_widgets = [self._mesh_widget(m, opacity=0.35) for m in self.dose_meshes if len(m.faces)]
            fig.meshes = fig.meshes + self._dose_widgets

    # ---------------------------------------------------------------- display
    def _mesh_widget(self, m: Mesh, opacity: float = 1.0):
        x, y, z = to_display(m.vertices)
        color = m.color
        if opacity < 1:  # per-vertex RGBA; the alpha takes effect with a transparent material
            rgb = [int(m.color[i:i + 2], 16) / 255 for i in (1, 3, 5)]
            color = np.tile(np.array(rgb + [opacity], np.float32), (len(x), 1))
        w = ipv.Mesh(x=x, y=y, z=z, triangles=m.faces.astype(np.uint32), color=color, description=m.name)
        if opacity < 1:
            w.material.transparent = True
            w.material.side = "DoubleSide"
            w.material.depthWrite = False
        return w

    @property
    def figure(self):
        """The ``ipyvolume.Figure`` widget (built on first access; display it directly)."""
        if self._figure is None:
            fig = ipv.Figure(width=self.width, height=self.height)
            fig.meshes = [self._mesh_widget(m) for m in self.structure_meshes if len(m.faces)]
            self._dose_widgets = [self._mesh_widget(m, opacity=0.35) for m in self.dose_meshes if len(m.faces)]
            fig.meshes = fig.meshes + self._dose_widgets
            # an equal-sided box around the grid keeps the aspect ratio true (mm on all axes)
            b = self.grid.bounds
            c = b.mean(axis=1)
            half = 0.5 * float((b[:, 1] - b[:, 0]).max())
            scat = []
            for src, iso in self.beam_lines:
                d = (src - iso) / np.linalg.norm(src - iso)
                end = iso + d * min(self.sad_mm, 1.5 * half)
                x, y, z = to_display(np.stack([iso, end]))
                s = ipv.Scatter(x=x, y=y, z=z, color="#ffcc00", connected=True, size=1, size_selected=1,
                                color_selected=None, description=f"beam {len(scat) + 1}")
                s.material.visible = False  # the line only, no markers
                scat.append(s)
            if self.beam_lines:
                x, y, z = to_display(np.stack([iso for _, iso in self.beam_lines]))
                scat.append(ipv.Scatter(x=x, y=y, z=z, color="#ffcc00", geo="sphere", size=2, size_selected=2,
                                        color_selected=None, description="isocentre"))
            fig.scatters = scat
            cx, cy, cz = (v[0] for v in to_display(c))
            fig.xlim = [cx - half, cx + half]
            fig.ylim = [cy - half, cy + half]
            fig.zlim = [cz - half, cz + half]
            fig.xlabel, fig.ylabel, fig.zlabel = "x (left) mm", "z (sup) mm", "-y (ant) mm"
            self._figure = fig
        return self._figure

    def add_pick_points(self, points_zyx, on_pick, color: str = "#ffffff", size: float = 1.5,
                        description: str = "pick points"):
        """Clickable markers at world points ``(n, 3)`` (mm); a click calls ``on_pick(point_zyx)``.

        ipyvolume reports which marker of a scatter was clicked (``clicked_index``), not where a
        mesh was hit, so a surface is made pickable by markers on its vertices (e.g.
        ``mesh.vertices[::k]``). Calling again replaces the markers. Setting
        ``pick_scatter.clicked_index`` from Python does what a click does.

        Returns
        -------
        ipyvolume.Scatter
            The markers (also :attr:`pick_scatter`).
        """
        pts = np.asarray(points_zyx, float)
        if pts.ndim != 2 or pts.shape[1] != 3 or not len(pts) or not np.all(np.isfinite(pts)):
            raise ValueError(f"points_zyx must be a non-empty (n, 3) array of finite world mm, got shape {pts.shape}")
        if not callable(on_pick):
            raise TypeError(f"on_pick must be callable, got {type(on_pick).__name__}")
        fig = self.figure
        x, y, z = to_display(pts)
        sc = ipv.Scatter(x=x, y=y, z=z, color=color, geo="sphere", size=size, size_selected=size * 2,
                         color_selected="#00ff00", description=description)
        old = getattr(self, "pick_scatter", None)
        fig.scatters = [s for s in fig.scatters if s is not old] + [sc]
        self.pick_points = pts
        self.pick_scatter = sc

        def clicked(change):
            i = change["new"]
            if i is not None and 0 <= int(i) < len(self.pick_points):
                on_pick(self.pick_points[int(i)].copy())

        sc.observe(clicked, names="clicked_index")
        return sc

    @property
    def widget(self):
        """Alias of :attr:`figure` (for layouts: ``ipywidgets.HBox([viewer, view3d.widget])``)."""
        return self.figure

    def _repr_mimebundle_(self, **kwargs):
        return self.figure._repr_mimebundle_(**kwargs)
