"""Loading the compiled core, and the one place that chooses between it and its twins.

The extension is optional: built wheels have it, ``FASTPGD_NO_EXT=1`` wheels do
not, and ``FASTPGD_DISABLE_EXT=1`` at run time hides it so that every public
name falls back to its pure-Python twin.

Every compiled part has an explicit pure-Python twin written beside its public name
(``PyStopwatch`` for ``Stopwatch``, and so on), and the choice between them is made here,
once, at import: a module writes ``Stopwatch = _ext.pick("Stopwatch", PyStopwatch)``. No
other module imports ``fastpgd._C`` or tests whether it loaded.
"""

from __future__ import annotations

import os

_TRUE = {"1", "true", "yes", "on"}

disabled_by_env = os.environ.get("FASTPGD_DISABLE_EXT", "").strip().lower() in _TRUE

#: The compiled module when it imported, even when disabled (for process-wide setup that
#: must hold whichever backend is in use); ``None`` in a pure-Python install.
built = None
#: The compiled module when it is in use, else ``None``.
_C = None
import_error: str | None = None
try:
    from fastpgd import _C as built
except ImportError as exc:  # a pure-Python wheel, or a broken build
    import_error = f"{type(exc).__name__}: {exc}"
else:
    if not disabled_by_env:
        _C = built


def has_ext() -> bool:
    """True when the compiled core is loaded and not disabled."""
    return _C is not None


def pick(name: str, twin):
    """``fastpgd._C.<name>`` when the extension is in use, else ``twin``, its pure-Python twin.

    Args:
        name (str): the attribute of the compiled module.
        twin: the pure-Python object with the same behaviour.
    """
    return getattr(_C, name) if _C is not None else twin


def require_ext(what: str):
    """Return the compiled core, or raise an error that says how to get it."""
    if _C is not None:
        return _C
    if disabled_by_env:
        why = "FASTPGD_DISABLE_EXT is set"
    else:
        why = f"the extension did not import ({import_error})"
    raise RuntimeError(
        f"{what} needs the compiled extension, but {why}. Unset FASTPGD_DISABLE_EXT, or "
        "reinstall with `pip install .` (without FASTPGD_NO_EXT=1) on a machine with a "
        "C++ compiler and CMake."
    )


def extension_info() -> dict:
    """What the compiled core contains and what is in use now.

    Returns:
        dict: ``cpu`` (CPU kernels built), ``cuda`` (CUDA kernels built),
        ``cuda_available`` (CUDA kernels built *and* a device usable now),
        ``openmp``, ``cuda_arches`` (list of CMake architecture strings),
        ``backend_in_use`` (``"extension"`` or ``"python"``), ``disabled_by_env``,
        ``import_error`` (``None`` when the extension imported), ``version``.
    """
    import torch

    from fastpgd import __version__

    info = {
        "version": __version__,
        "cpu": False,
        "cuda": False,
        "cuda_available": False,
        "openmp": False,
        "cuda_arches": [],
        "sanitizers": False,
        "backend_in_use": "extension" if _C is not None else "python",
        "disabled_by_env": disabled_by_env,
        "import_error": import_error,
        "torch": torch.__version__,
    }
    if built is not None:
        info.update(built.build_info)
        info["cuda_arches"] = list(info["cuda_arches"])
        info["cuda_available"] = bool(
            info["cuda"] and torch.cuda.is_available() and built.cuda_device_count() > 0
        )
    return info
