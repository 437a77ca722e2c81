"""The fused step's argument checks in Python, in the order and words of the compiled entry.

``fastpgd._C.pgd_step_`` checks its arguments in C++ (csrc/binding/pgd_step.cpp): that is the
source of truth. The pure-PyTorch twin ``fastpgd.step._py_pgd_step_`` checks them here, in the
same order, with the same exception types and messages, before it computes anything; and
``reference_pgd_step`` runs the subset that applies to an out-of-place update. One table of bad
inputs (tests/test_step_boundary.py) runs through both backends and compares what each raises,
so a change on one side that the other does not follow fails the suite.

Both take torch tensors: other DLPack producers (numpy arrays, ...), which the compiled entry
would borrow, are refused by ``pgd_step_`` before either backend sees them.
"""

from __future__ import annotations

import math

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# DLPack type codes of the narrow float formats (dlpack.h, DLDataTypeCode), which the compiled
# entry names "dtype_code<code>_<bits>" because it has no name for them.
_NARROW_FLOAT_CODES = {
    "float8_e3m4": (7, 8),
    "float8_e4m3": (8, 8),
    "float8_e4m3b11fnuz": (9, 8),
    "float8_e4m3fn": (10, 8),
    "float8_e4m3fnuz": (11, 8),
    "float8_e5m2": (12, 8),
    "float8_e5m2fnuz": (13, 8),
    "float8_e8m0fnu": (14, 8),
    "float4_e2m1fn_x2": (17, "4x2"),
}
_NARROW_FLOAT_NAMES = {
    getattr(torch, name): f"dtype_code{code}_{bits}"
    for name, (code, bits) in _NARROW_FLOAT_CODES.items()
    if hasattr(torch, name)
}
# Dtypes torch's DLPack export refuses (bit and quantized types, even as views of plain bytes):
# the twin asks torch's exporter what it says about them, and refuses them in the same words.
_UNEXPORTABLE_DTYPES = tuple(
    getattr(torch, name)
    for name in (
        *("bits1x8", "bits2x4", "bits4x2", "bits8", "bits16"),
        *("qint8", "quint8", "qint32", "quint4x2", "quint2x4"),
    )
    if hasattr(torch, name)
)
# DLPack device codes of the devices torch exports besides CPU and CUDA (dlpack.h, DLDeviceType).
_DLPACK_DEVICE_CODES = {"mps": 8, "xpu": 14}
_HEAP_TYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE

#: Whether torch offers the DLPack C exchange API (torch >= 2.10), through which the compiled
#: entry borrows torch tensors; older torch exports them through ``__dlpack__``.
TORCH_EXCHANGE_API = hasattr(torch.Tensor, "__dlpack_c_exchange_api__")


def type_name(obj) -> str:
    """``Py_TYPE(obj)->tp_name``: the bare name of a class written in Python or a builtin, the
    dotted name of any other C type (``numpy.ndarray``)."""
    tp = type(obj)
    if tp.__flags__ & _HEAP_TYPE or tp.__module__ == "builtins":
        return tp.__name__
    return f"{tp.__module__}.{tp.__qualname__}"


def num_str(value: float) -> str:
    """``printf("%.9g")`` as glibc writes it (a NaN with its sign bit set is ``-nan``)."""
    if math.isnan(value):
        return "-nan" if math.copysign(1.0, value) < 0 else "nan"
    return f"{value:.9g}"


def real(value, name: str) -> float:
    """A Python real number as a float, as the compiled entry's ``to_double`` reads it.

    Refused with TypeError: bools, complex numbers, tensors (anything with ``__dlpack__``) and
    objects without ``__float__`` or ``__index__``; an int too large for a float is a ValueError.
    """
    if type(value) is float:
        return value
    if isinstance(value, (bool, complex)) or hasattr(value, "__dlpack__"):
        raise TypeError(f"{name} must be a real number, got {type_name(value)}")
    if isinstance(value, float):
        return float.__float__(value)  # a float subclass's value, as PyFloat_AsDouble reads it
    tp = type(value)
    if not (hasattr(tp, "__float__") or hasattr(tp, "__index__")):
        raise TypeError(f"{name} must be a real number, got {type_name(value)}")
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{name} is too large for a float") from None
    except Exception:
        raise TypeError(f"{name} must be a real number, got {type_name(value)}") from None


def stream_arg(stream) -> int:
    """The optional 8th argument of the compiled entry: a CUDA stream handle, or None."""
    if stream is None:
        return 0
    if not isinstance(stream, int):
        raise TypeError("stream must be an int or None")
    if not 0 <= stream < 1 << 64:
        raise ValueError("stream must be a non-negative int")
    return int(stream)


def scalars(eps, alpha, norm, clamp):
    """Checks ``norm``, ``alpha``, ``clamp`` and a scalar ``eps``, in the compiled entry's order.

    Returns:
        tuple: ``(eps, alpha, norm, clamp)`` with ``alpha`` a float, ``clamp`` ``None`` or a pair
        of floats, and ``eps`` a float, or unchanged when it is a tensor (checked later, with
        the tensors).
    """
    if not isinstance(norm, str):
        raise TypeError(f"norm must be a str ('linf' or 'l2'), got {type_name(norm)}")
    if norm != "linf" and norm != "l2":
        raise ValueError(f"norm must be 'linf' or 'l2', got '{_c_string(norm)}'")
    alpha = real(alpha, "alpha")
    if not math.isfinite(alpha):
        raise ValueError(f"alpha must be finite, got {num_str(alpha)}")
    if clamp is not None:
        if not isinstance(clamp, (tuple, list)) or len(clamp) != 2:
            raise TypeError(f"clamp must be None or a pair (lo, hi), got {type_name(clamp)}")
        lo, hi = real(clamp[0], "clamp lo"), real(clamp[1], "clamp hi")
        if math.isnan(lo) or math.isnan(hi):
            raise ValueError(f"clamp bounds must not be NaN, got ({num_str(lo)}, {num_str(hi)})")
        if lo > hi:
            raise ValueError(f"clamp must have lo <= hi, got ({num_str(lo)}, {num_str(hi)})")
        clamp = (lo, hi)
    if not is_tensor_like(eps):
        eps = real(eps, "eps")
        if not eps >= 0.0:
            raise ValueError(f"eps must be >= 0 and not NaN, got {num_str(eps)}")
    return eps, alpha, norm, clamp


def is_tensor_like(obj) -> bool:
    """What the compiled entry takes for a tensor: an object that can export itself by DLPack."""
    return hasattr(obj, "__dlpack__") or hasattr(type(obj), "__dlpack_c_exchange_api__")


def _c_string(text: str) -> str:
    # The compiled entry copies the norm's UTF-8 bytes into a C string: "?" where it has none,
    # and cut at the first NUL.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "?"
    return text.split("\0", 1)[0]


def dtype_name(dtype: torch.dtype) -> str:
    """The name the compiled entry gives the DLPack type torch exports ``dtype`` as."""
    narrow = _NARROW_FLOAT_NAMES.get(dtype)
    if narrow is not None:
        return narrow
    if dtype is torch.bool:
        return "bool"
    bits = dtype.itemsize * 8
    if dtype.is_complex:
        return f"complex{bits}"
    if dtype is torch.bfloat16:
        return "bfloat16"
    if dtype.is_floating_point:
        return f"float{bits}"
    return f"int{bits}" if dtype.is_signed else f"uint{bits}"


def device_name(device: torch.device) -> str:
    """The name the compiled entry gives the DLPack device torch exports ``device`` as."""
    if device.type == "cpu":
        return "cpu"
    index = device.index or 0
    if device.type == "cuda":
        return f"rocm:{index}" if torch.version.hip else f"cuda:{index}"
    code = _DLPACK_DEVICE_CODES.get(device.type)
    return f"device_type{code}:{index}" if code is not None else str(device)


def shape_str(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(n) for n in t.shape) + "]"


def strides_str(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.stride()) + ")"


def is_contiguous(t: torch.Tensor) -> bool:
    """Row-major contiguous: dims of size 1 may have any stride; an empty tensor always is."""
    expected = 1
    for size, stride in zip(reversed(t.shape), reversed(t.stride()), strict=True):
        if size == 0:
            return True
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two contiguous tensors share a byte of memory."""
    na, nb = a.numel() * a.element_size(), b.numel() * b.element_size()
    if na == 0 or nb == 0 or a.device != b.device:
        return False
    a0, b0 = a.data_ptr(), b.data_ptr()
    return a0 < b0 + nb and b0 < a0 + na


def _first_line(exc: BaseException) -> str:
    return str(exc).split("\n", 1)[0]


def _export_error(exc: BaseException, what: str) -> Exception:
    # The compiled entry's rethrow_python_error: what the producer raised, under the argument's
    # name; BufferError and ValueError become ValueError, anything else TypeError.
    cls = ValueError if isinstance(exc, (BufferError, ValueError)) else TypeError
    return cls(f"{what}: {_first_line(exc)}")


def _refuses_export(t: torch.Tensor) -> bool:
    # Tensors torch may refuse to export: the twin then asks torch's exporter (below). Plain
    # strided CPU/CUDA tensors skip the question, which costs a DLPack export.
    return (
        t.layout is not torch.strided
        or t.is_nested
        or t.is_quantized
        or t.dtype in _UNEXPORTABLE_DTYPES
        or t.device.type not in ("cpu", "cuda")
        or (not TORCH_EXCHANGE_API and (t.requires_grad or t.is_conj() or t.is_neg()))
    )


def _check_export(t: torch.Tensor, name: str, stream: int) -> None:
    # What the compiled entry hears when it borrows `t`: through the exchange API, torch's
    # toDLPack (the same checks as torch.utils.dlpack.to_dlpack) and a TypeError; else the
    # tensor's __dlpack__, with the consumer stream on CUDA.
    if TORCH_EXCHANGE_API:
        try:
            torch.utils.dlpack.to_dlpack(t)
        except Exception as exc:
            raise TypeError(
                f"{name} could not be viewed through DLPack: {_first_line(exc)}"
            ) from None
        return
    kwargs = {"stream": stream or 1} if t.device.type == "cuda" else {}
    try:
        try:
            t.__dlpack__(max_version=(1, 0), **kwargs)
        except TypeError:
            t.__dlpack__(**kwargs)
    except Exception as exc:
        raise _export_error(exc, f"{name} could not be exported through DLPack") from None


def not_torch(obj, name: str) -> TypeError:
    """The error for a DLPack producer that is not a torch tensor (a numpy array, ...):
    ``pgd_step_`` and its pure-PyTorch twin take torch tensors only."""
    return TypeError(
        f"{name} must be a torch.Tensor, got {type_name(obj)} (convert it with torch.from_dlpack)"
    )


def as_tensor(obj, name: str, in_place: bool, stream: int = 0) -> torch.Tensor:
    """``obj`` if it is a torch tensor, else the compiled entry's TypeError for a non-tensor.

    With ``in_place``, a torch tensor that DLPack cannot carry is refused as the compiled entry
    refuses it. Other DLPack producers are refused with :func:`not_torch` (the compiled entry
    would borrow them, but ``pgd_step_`` refuses them first, for both backends).
    """
    if isinstance(obj, torch.Tensor):
        if in_place and _refuses_export(obj):
            _check_export(obj, name, stream)
        return obj
    if is_tensor_like(obj):
        raise not_torch(obj, name)
    raise TypeError(f"{name} must be a tensor (an object supporting DLPack), got {type_name(obj)}")


def _check_dtype_device(t: torch.Tensor, x: torch.Tensor, name: str) -> None:
    if t.dtype != x.dtype:
        raise TypeError(
            f"{name} must have the same dtype as x_adv, got {dtype_name(t.dtype)} "
            f"and {dtype_name(x.dtype)}"
        )
    if t.device != x.device:
        raise ValueError(
            f"{name} must be on the same device as x_adv, got {device_name(t.device)} "
            f"and {device_name(x.device)}"
        )


def _check_like(t: torch.Tensor, x: torch.Tensor, name: str, in_place: bool) -> None:
    _check_dtype_device(t, x, name)
    if t.shape != x.shape:
        raise ValueError(
            f"{name} must have the same shape as x_adv, got {shape_str(t)} and {shape_str(x)}"
        )
    if in_place and not is_contiguous(t):
        raise ValueError(
            f"{name} must be contiguous, got strides {strides_str(t)} for shape {shape_str(t)} "
            "(call .contiguous())"
        )


def checked(x_adv, grad, x0, eps, alpha, norm, clamp, *, in_place: bool, stream: int = 0):
    """Every check of the compiled entry, in its order; the tensors as torch tensors.

    Args:
        in_place (bool): the checks of the in-place step (``x_adv`` written while the others are
            read: layout, contiguity, overlaps, a supported device), else
            only those of an out-of-place update (``reference_pgd_step``).
        stream (int): the compiled entry's consumer stream, for the export of CUDA tensors.

    Returns:
        tuple: ``(x_adv, grad, x0, eps, alpha, norm, clamp)`` with tensors, ``eps`` a float or a
        tensor, ``alpha`` a float and ``clamp`` ``None`` or a pair of floats.
    """
    eps, alpha, norm, clamp = scalars(eps, alpha, norm, clamp)
    # Every tensor is imported before any is checked, as the compiled entry does.
    x = as_tensor(x_adv, "x_adv", in_place, stream)
    g = as_tensor(grad, "grad", in_place, stream)
    c = as_tensor(x0, "x0", in_place, stream)
    e = None if isinstance(eps, float) else as_tensor(eps, "eps", in_place, stream)
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(
            "x_adv must be a floating-point tensor (float16, bfloat16, float32 or float64), "
            f"got {dtype_name(x.dtype)}"
        )
    _check_like(g, x, "grad", in_place)
    _check_like(c, x, "x0", in_place)
    if in_place:
        if not is_contiguous(x):
            raise ValueError(
                f"x_adv must be contiguous, got strides {strides_str(x)} for shape "
                f"{shape_str(x)} (call .contiguous())"
            )
        # Here the compiled entry refuses a read-only x_adv: torch never exports one.
        if x.device.type not in ("cpu", "cuda"):
            raise ValueError(
                f"x_adv is on {device_name(x.device)}; fastpgd supports cpu and cuda tensors"
            )
        if overlaps(x, g):
            raise ValueError("x_adv must not overlap grad: it is written while grad is read")
        if overlaps(x, c):
            raise ValueError("x_adv must not overlap x0: it is written while x0 is read")
    if e is not None:
        eps = _checked_eps(e, x, in_place)
    return x, g, c, eps, alpha, norm, clamp


def _checked_eps(e: torch.Tensor, x: torch.Tensor, in_place: bool) -> torch.Tensor:
    batch = x.shape[0] if x.dim() > 0 else 1
    _check_dtype_device(e, x, "eps")
    if e.dim() != 1 or e.shape[0] != batch:
        raise ValueError(
            f"eps must be a float or a 1-D tensor with one value per sample ({batch}), "
            f"got shape {shape_str(e)}"
        )
    if in_place:
        if not is_contiguous(e):
            raise ValueError(f"eps must be contiguous, got strides {strides_str(e)}")
        if overlaps(x, e):
            raise ValueError("x_adv must not overlap eps: it is written while eps is read")
    # Checking the values of a CUDA tensor would cost a device sync: CPU only, as in C++.
    if e.device.type == "cpu":
        valid = e >= 0
        if not bool(valid.all()):
            i = int((~valid).nonzero()[0, 0])
            raise ValueError(
                f"eps must be >= 0 and not NaN, got {num_str(float(e[i]))} for sample {i}"
            )
    return e
