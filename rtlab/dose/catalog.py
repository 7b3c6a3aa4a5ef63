"""Beam models by name or file: the built-in machines and matRad machine files in one call.

:func:`resolve_machine` is what every entry point that takes a beam model uses
(:func:`rtlab.planning.plan_case`, ``rtlab dose|plan|batch|score --machine-file``, the dose panel's
machine picker): it accepts

* ``None``: the default, :func:`rtlab.dose.generic_6mv` (the commissioned generic 6 MV machine);
* a :class:`rtlab.dose.Machine` (returned unchanged);
* a built-in name from :data:`BUILTIN_MACHINES` (``'generic_6mv'``, ``'generic_6mv_v1'``);
* a path (``str`` or :class:`os.PathLike`) to a matRad photon machine file
  (``photons_<name>.mat``), loaded by :func:`rtlab.dose.load_matrad_machine`. The kernel fit of a
  file is done once per process and path (cached by the file's path, size and modification time).
"""

from __future__ import annotations

import os
from pathlib import Path

from .machine import Machine, generic_6mv, load_matrad_machine

__all__ = ["BUILTIN_MACHINES", "list_dose_machines", "resolve_machine"]

#: Built-in beam models by name (factories; each call returns a fresh Machine).
BUILTIN_MACHINES = {
    "generic_6mv": lambda: generic_6mv(2),
    "generic_6mv_v1": lambda: generic_6mv(1),
}

_FILE_CACHE: dict = {}


def list_dose_machines() -> list[str]:
    """Names of the built-in beam models (:data:`BUILTIN_MACHINES`)."""
    return list(BUILTIN_MACHINES)


def _load_file(p: Path) -> Machine:
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    m = _FILE_CACHE.get(key)
    if m is None:
        m = load_matrad_machine(p)
        _FILE_CACHE[key] = m
    return m


def resolve_machine(machine=None, what: str = "machine") -> Machine:
    """The beam model named by ``machine`` (see the module docstring).

    Parameters
    ----------
    machine : None, Machine, str or path-like
        None (default machine), a Machine, a built-in name, or a matRad ``.mat`` machine file.
    what : str
        How error messages name the argument (e.g. ``'--machine-file'``).

    Returns
    -------
    Machine

    Raises
    ------
    ValueError
        An unknown name that is not an existing file, or a file that is not a matRad photon
        machine (the message names the file and what is wrong).
    TypeError
        Anything else.
    """
    if machine is None:
        return generic_6mv()
    if isinstance(machine, Machine):
        return machine
    if isinstance(machine, (str, os.PathLike)):
        text = os.fspath(machine)
        if isinstance(machine, str) and text in BUILTIN_MACHINES:
            return BUILTIN_MACHINES[text]()
        p = Path(text).expanduser()
        if p.is_file():
            try:
                return _load_file(p)
            except ValueError as exc:
                raise ValueError(f"{what}: {exc}") from None
        if p.suffix.lower() == ".mat" or os.sep in text:
            raise ValueError(f"{what}: file {text!r} does not exist; pass a matRad photon machine file "
                             "(photons_<name>.mat) or a built-in name " + str(list_dose_machines()))
        raise ValueError(f"{what}: unknown machine {text!r}; built-in names are {list_dose_machines()}, "
                         "or pass the path of a matRad photon machine file (photons_<name>.mat)")
    raise TypeError(f"{what} must be None, an rtlab.dose.Machine, a built-in name or a matRad .mat path, "
                    f"got {type(machine).__name__}")
