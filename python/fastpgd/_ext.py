"""Loading the compiled core, and what it says about itself.

The extension is optional: built wheels have it, ``FASTPGD_NO_EXT=1`` wheels do
not, and ``FASTPGD_DISABLE_EXT=1`` at run time hides it so that every public
name falls back to its pure-Python twin.
"""

from __future__ import annotations

import os

_TRUE = {"1", "true", "yes", "on"}

disabled_by_env = os.environ.get("FASTPGD_DISABLE_EXT", "").strip().lower() in _TRUE

_C = None
import_error: str | None = None
try:
    from fastpgd import _C as _C_module
except ImportError as exc:  # a pure-Python wheel, or a broken build
    import_error = f"{type(exc).__name__}: {exc}"
else:
    if not disabled_by_env:
        _C = _C_module


def has_ext() -> bool:
    """True when the compiled core is loaded and not disabled."""
    return _C is not None


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

    try:
        from fastpgd import _C as built
    except ImportError:
        built = None
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
