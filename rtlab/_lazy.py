"""The one way rtlab imports optional dependencies and defers heavy submodules.

rtlab's core needs numpy, scipy, numba, pandas, matplotlib, tqdm and scikit-image; every other
package is an *extra* (``pyproject.toml``): ``torch`` ([ml]), ``dask``/``distributed`` ([dask]),
``ipywidgets``/``anywidget``/``ipyvolume``/``traitlets`` ([lab]), ``cupy``/``numba.cuda``
([gpu]), ``pydicom``/``h5py`` ([dicom]). A module that uses one binds it at its top with
:func:`load` (the pattern of scikit-image's ``lazy_loader``, written here so that rtlab needs
no further dependency)::

    from .._lazy import load
    torch = load("torch", extra="ml", purpose="the dose-region model")

    def train(...):
        net = torch.nn.Conv3d(...)      # torch is imported here, on first use

The name is a stand-in module whose attributes import the real module on every access (a
lookup in ``sys.modules`` once it is imported), so that:

* importing an rtlab module never imports an optional package (``import rtlab`` stays quick
  and works without the extras);
* a missing package raises :class:`ImportError` at the point of use, naming the extra to
  install (``pip install 'rtlab[ml]'``);
* tests that hide a package (``monkeypatch.setitem(sys.modules, "h5py", None)``) see it
  missing, because nothing is cached in the stand-in.

Packages use :func:`attach` to defer their own heavy submodules (``rtlab.widgets`` panels,
moved-module aliases in ``rtlab``). :data:`OPTIONAL` lists the optional top-level packages;
``tests/test_architecture.py`` checks that no rtlab module imports one directly.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

__all__ = ["OPTIONAL", "LazyModule", "load", "resolve", "available", "attach", "alias_module"]

#: Optional top-level packages -> the pyproject extra that installs them.
OPTIONAL = {
    "torch": "ml",
    "dask": "dask",
    "distributed": "dask",
    "ipywidgets": "lab",
    "anywidget": "lab",
    "ipyvolume": "lab",
    "traitlets": "lab",
    "cupy": "gpu",
    "cupyx": "gpu",
    "numba.cuda": "gpu",
    "pydicom": "dicom",
    "h5py": "dicom",
}


def _extra_of(name: str) -> str | None:
    for key, extra in OPTIONAL.items():
        if name == key or name.startswith(key + "."):
            return extra
    return None


class LazyModule(types.ModuleType):
    """Stand-in for an optional module: every attribute access imports (or looks up) the real one.

    Made by :func:`load`; see the module docstring.
    """

    def __init__(self, name: str, extra: str | None, purpose: str):
        super().__init__(name)
        # object.__setattr__ keeps these out of the attribute protocol below
        object.__setattr__(self, "_lazy_spec", (name, extra, purpose))

    def _lazy_import(self):
        name, extra, purpose = object.__getattribute__(self, "_lazy_spec")
        try:
            return importlib.import_module(name)
        except ImportError as exc:
            what = f"{purpose} needs {name}" if purpose else f"{name} is needed here"
            hint = f"pip install 'rtlab[{extra}]' (or pip install {name.split('.')[0]})" if extra else \
                f"pip install {name.split('.')[0]}"
            raise ImportError(f"{what}: {hint}; the import failed with: {exc}") from exc

    #: Attributes that copy, pickle and inspect probe on any object: answered without importing.
    _PROBES = frozenset({"__wrapped__", "__deepcopy__", "__copy__", "__reduce__", "__reduce_ex__", "__getstate__",
                         "__setstate__", "__signature__", "__call__", "__len__", "__iter__", "__fspath__"})

    def __getattr__(self, attr: str):
        if attr in LazyModule._PROBES:
            raise AttributeError(attr)
        return getattr(self._lazy_import(), attr)

    def __dir__(self):
        return dir(self._lazy_import())

    def __repr__(self) -> str:
        name, extra, _ = object.__getattribute__(self, "_lazy_spec")
        state = "imported" if name in sys.modules and sys.modules[name] is not None else "not imported yet"
        return f"<lazy module {name!r} ({state}; extra {extra!r})>"


def load(name: str, extra: str | None = None, purpose: str = "") -> LazyModule:
    """A stand-in for the optional module ``name``, imported on first attribute access.

    Parameters
    ----------
    name : str
        Module name, e.g. ``"torch"``, ``"numba.cuda"``, ``"pydicom.dataset"``.
    extra : str, optional
        The pyproject extra that installs it (default: looked up in :data:`OPTIONAL`).
    purpose : str
        What needs it, for the error message (e.g. ``"DICOM support"``).

    Returns
    -------
    LazyModule
        Attribute access imports the real module (or raises :class:`ImportError` naming the
        extra to install).
    """
    return LazyModule(name, extra if extra is not None else _extra_of(name), purpose)


def resolve(module):
    """The real module behind a :func:`load` stand-in (imported now; ImportError naming the extra).

    Anything else is returned as is. Needed where the module object itself matters, e.g. numba's
    CUDA simulator, which swaps kernel globals that *are* ``numba.cuda``.
    """
    if isinstance(module, LazyModule):
        return module._lazy_import()
    return module


def available(name: str) -> bool:
    """Whether ``name`` can be imported, without importing it (``False`` when hidden in ``sys.modules``)."""
    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def attach(package: str, submodules=(), submod_attrs=None):
    """Lazy attributes of a package: ``__getattr__, __dir__, __all__`` for its ``__init__``.

    As ``lazy_loader.attach``: ``submodules`` are imported when first accessed as attributes
    (``rtlab.widgets.planlab``); ``submod_attrs`` maps a submodule to names it defines that
    the package exposes (``{"planlab": ["PlanLab"]}``: ``rtlab.widgets.PlanLab``).

    Usage at the end of a package ``__init__``::

        __getattr__, __dir__, __all__ = attach(__name__, ["planlab"], {"planlab": ["PlanLab"]})

    (a package that also defines names itself extends the returned ``__all__``).
    """
    submodules = set(submodules)
    attr_to_module = {attr: mod for mod, attrs in (submod_attrs or {}).items() for attr in attrs}
    names = sorted(submodules | set(attr_to_module))

    def __getattr__(name):
        if name in submodules:
            return importlib.import_module(f"{package}.{name}")
        if name in attr_to_module:
            module = importlib.import_module(f"{package}.{attr_to_module[name]}")
            return getattr(module, name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(names) | set(vars(sys.modules[package])))

    return __getattr__, __dir__, list(names)


def alias_module(old: str, module: types.ModuleType) -> types.ModuleType:
    """Make the module name ``old`` an alias of ``module`` (for modules that moved).

    A moved module's old file holds only its docstring ("Moved to ...") and::

        from .core import geometry
        alias_module(__name__, geometry)

    so that ``import rtlab.core.geometry`` gives the very module ``rtlab.core.geometry`` (same
    objects, private names and monkeypatching included) for one release.
    """
    sys.modules[old] = module
    return module
