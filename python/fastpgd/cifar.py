"""CIFAR-10 and CIFAR-100 in their official "python version", read without trusting the pickles.

The distribution (A. Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009)
is a folder of Python 2 pickles, ``cifar-10-batches-py/`` (``data_batch_1`` .. ``data_batch_5``,
``test_batch``, ``batches.meta``) or ``cifar-100-python/`` (``train``, ``test``, ``meta``), shipped
as ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``. Each batch is a dict with bytes keys:
``b'data'``, a numpy ``uint8`` array ``[N, 3072]`` (per image 1024 red, 1024 green, 1024 blue
bytes, each plane row-major 32x32), and ``b'labels'`` (CIFAR-10) or ``b'fine_labels'`` and
``b'coarse_labels'`` (CIFAR-100), lists of ints; the fine labels are the 100 classes read here.

Unpickling runs whatever the file says, so the batches are never given to :func:`pickle.load`.
A restricted unpickler resolves only the three globals numpy's array pickles name (the array
reconstructor, ``numpy.ndarray``, ``numpy.dtype``), and even those are stand-ins that record
their arguments and refuse anything but a one-byte unsigned dtype: no numpy code sees the
file's contents until the array's shape and byte count have been checked, and then the array is
one :func:`numpy.frombuffer` over bytes already in memory. Any other global is refused before
anything runs, with an error naming the file and the global. Each file or archive member is
capped in size before it is read (:data:`MAX_BATCH_BYTES`), so memory is bounded by the cap.

Python 2 strings are read with ``encoding="bytes"``: the keys stay ``b'data'`` as written, and
the 30 MB pixel string of a batch arrives as the ``bytes`` the array is built on, with no decode
and re-encode (``"latin1"`` would also keep the pixels intact, but at the cost of that round
trip and with ``str`` keys that differ from the file's).
"""

from __future__ import annotations

import io
import itertools
import math
import os
import pickle
import reprlib
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "CIFAR_CLASSES",
    "CIFAR_MEAN",
    "CIFAR_STD",
    "CIFARFormatError",
    "MAX_ARCHIVE_BYTES",
    "MAX_ARCHIVE_MEMBERS",
    "MAX_BATCH_BYTES",
    "read_cifar",
]

#: Per-channel (R, G, B) mean of the training images in [0, 1], the values the adversarial
#: training literature normalises with (e.g. Rice et al. 2020, Rebuffi et al. 2021).
CIFAR_MEAN = {
    "cifar10": (0.4914, 0.4822, 0.4465),
    "cifar100": (0.5071, 0.4865, 0.4409),
}
#: Per-channel (R, G, B) standard deviation of the training images in [0, 1].
CIFAR_STD = {
    "cifar10": (0.2471, 0.2435, 0.2616),
    "cifar100": (0.2673, 0.2564, 0.2762),
}

#: The largest batch file or archive member read, in bytes. The biggest official one,
#: ``cifar-100-python/train``, is about 155 MB (50,000 x 3,072 pixel bytes plus file names).
MAX_BATCH_BYTES = 256 * 2**20
#: The most an archive may hold, uncompressed, and the most members: the official archives
#: hold about 180 MB in under ten members, and a compressed stream of zeros could claim far more.
MAX_ARCHIVE_BYTES = 2**30
MAX_ARCHIVE_MEMBERS = 1000

_PIXELS = 3 * 32 * 32


class CIFARFormatError(ValueError):
    """A CIFAR file or archive is truncated, incomplete, malformed, or asks to run code."""


@dataclass(frozen=True)
class _Layout:
    folder: str
    archive: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    label_key: bytes
    num_classes: int
    images_per_file: dict  # split -> images in each of its files in the official release


_LAYOUTS = {
    "cifar10": _Layout(
        folder="cifar-10-batches-py",
        archive="cifar-10-python.tar.gz",
        train=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test=("test_batch",),
        meta="batches.meta",
        label_key=b"labels",
        num_classes=10,
        images_per_file={"train": 10_000, "test": 10_000},
    ),
    "cifar100": _Layout(
        folder="cifar-100-python",
        archive="cifar-100-python.tar.gz",
        train=("train",),
        test=("test",),
        meta="meta",
        label_key=b"fine_labels",
        num_classes=100,
        images_per_file={"train": 50_000, "test": 10_000},
    ),
}

#: The classes of each dataset's labels (CIFAR-100: its fine labels).
CIFAR_CLASSES = {name: layout.num_classes for name, layout in _LAYOUTS.items()}


# ----------------------------------------------------------------------------------------------
# The restricted unpickler and the stand-ins it hands to the pickle machine.


class _BriefRepr(reprlib.Repr):
    """Short reprs of untrusted values for messages: never the whole of a long string or int."""

    def __init__(self):
        super().__init__()
        self.maxstring = self.maxother = 40

    def repr_bytes(self, obj, level):
        return repr(obj[:24]) + ("..." if len(obj) > 24 else "")

    repr_bytearray = repr_bytes

    def repr_int(self, obj, level):
        # repr() of a huge int is slow, and refused past sys.get_int_max_str_digits().
        return repr(obj) if obj.bit_length() <= 64 else f"<int of {obj.bit_length()} bits>"


_brief = _BriefRepr().repr


class _NdarrayType:
    """Stands for ``numpy.ndarray`` as the reconstructor's first argument; cannot be called."""

    def __repr__(self) -> str:
        return "numpy.ndarray"


_NDARRAY = _NdarrayType()


class _PickledDtype:
    """What ``numpy.dtype('u1', ...)`` plus its pickled state describe, checked, not built."""

    def __init__(self, origin: str, args: tuple):
        if not args or args[0] not in ("u1", b"u1"):
            found = args[0] if args else None
            raise CIFARFormatError(
                f"{origin}: array dtype {_brief(found)} is not allowed: CIFAR pixels are "
                "uint8 ('u1')"
            )
        self.origin = origin

    def __setstate__(self, state) -> None:
        # numpy writes (version, byteorder, subarray, names, fields, elsize, alignment, flags
        # [, metadata]); a plain uint8 has no subarray, names or fields.
        if not isinstance(state, tuple) or len(state) < 5 or any(s is not None for s in state[2:5]):
            raise CIFARFormatError(
                f"{self.origin}: array dtype state {_brief(state)} is not that of plain uint8"
            )


class _PickledArray:
    """An array being unpickled: the reconstructor makes it, ``BUILD`` fills it, once checked."""

    def __init__(self, origin: str):
        self.origin = origin
        self.array: np.ndarray | None = None

    def __setstate__(self, state) -> None:
        # numpy's array state: (version, shape, dtype, is_fortran, raw bytes).
        if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1):
            raise CIFARFormatError(f"{self.origin}: unexpected numpy array state {_brief(state)}")
        _, shape, dtype, fortran, raw = state
        if not (isinstance(shape, tuple) and all(type(d) is int and d >= 0 for d in shape)):
            raise CIFARFormatError(f"{self.origin}: bad array shape {_brief(shape)}")
        if not isinstance(dtype, _PickledDtype) or not isinstance(raw, bytes):
            raise CIFARFormatError(
                f"{self.origin}: array of shape {shape} does not hold raw uint8 bytes"
            )
        if math.prod(shape) != len(raw):
            raise CIFARFormatError(
                f"{self.origin}: array of shape {shape} needs {math.prod(shape)} bytes, "
                f"the file holds {len(raw)}"
            )
        order = "F" if fortran else "C"
        self.array = np.frombuffer(raw, dtype=np.uint8).reshape(shape, order=order)


def _reconstruct(origin: str, args: tuple) -> _PickledArray:
    # numpy pickles an array as _reconstruct(ndarray, (0,), b'b') followed by BUILD(state).
    if len(args) != 3 or args[0] is not _NDARRAY or args[1] != (0,) or args[2] not in (b"b", "b"):
        raise CIFARFormatError(
            f"{origin}: unexpected numpy array constructor arguments {_brief(args)}"
        )
    return _PickledArray(origin)


class _CIFARUnpickler(pickle.Unpickler):
    """Resolves only the globals of numpy's array pickles, each to a checking stand-in."""

    def __init__(self, file, origin: str):
        super().__init__(file, encoding="bytes")
        self.origin = origin

    def find_class(self, module: str, name: str):
        # Old files name numpy.core.multiarray, numpy >= 2 writes numpy._core.multiarray.
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return lambda *args: _reconstruct(self.origin, args)
        if (module, name) == ("numpy", "ndarray"):
            return _NDARRAY
        if (module, name) == ("numpy", "dtype"):
            return lambda *args: _PickledDtype(self.origin, args)
        raise CIFARFormatError(
            f"{self.origin}: refused to load the global {module}.{name}: a CIFAR batch holds "
            "only numpy uint8 arrays, lists and strings (the file is not a CIFAR batch, or "
            "was crafted to run code)"
        )

    def persistent_load(self, pid):
        raise CIFARFormatError(f"{self.origin}: refused a persistent id {_brief(pid)}")


def _unpickle(raw: bytes, origin: str):
    try:
        return _CIFARUnpickler(io.BytesIO(raw), origin).load()
    except CIFARFormatError:
        raise
    except Exception as exc:
        # Whatever the pickle machine trips over in an untrusted file is a format error: say so
        # with the file's name instead of a traceback from inside pickle.
        raise CIFARFormatError(
            f"{origin}: not a readable CIFAR pickle, truncated or corrupt "
            f"({type(exc).__name__}: {exc})"
        ) from exc


# ----------------------------------------------------------------------------------------------
# One batch: unpickle, then check every field the format promises.


def _parse_batch(raw: bytes, origin: str, layout: _Layout) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(raw, origin)
    if not isinstance(batch, dict):
        raise CIFARFormatError(
            f"{origin}: expected a dict of the batch's fields, got {type(batch).__name__}"
        )
    for key in (b"data", layout.label_key):
        if key not in batch:
            keys = ", ".join(_brief(k) for k in itertools.islice(batch, 8))
            raise CIFARFormatError(f"{origin}: no key {key!r} (keys: {keys or 'none'})")
    data = batch[b"data"]
    if not isinstance(data, _PickledArray) or data.array is None:
        raise CIFARFormatError(f"{origin}: b'data' is not a numpy uint8 array")
    images = data.array
    if images.ndim != 2 or images.shape[1] != _PIXELS:
        raise CIFARFormatError(
            f"{origin}: b'data' has shape {images.shape}, expected (N, {_PIXELS}): one row of "
            "3x32x32 pixel bytes per image"
        )
    labels = batch[layout.label_key]
    key = layout.label_key
    if not isinstance(labels, list):
        kind = "numpy array" if isinstance(labels, _PickledArray) else type(labels).__name__
        raise CIFARFormatError(f"{origin}: {key!r} is a {kind}, not a list of ints")
    if len(labels) != images.shape[0]:
        raise CIFARFormatError(
            f"{origin}: {images.shape[0]} images but {len(labels)} labels in {key!r}"
        )
    for i, label in enumerate(labels):
        if type(label) is not int:
            raise CIFARFormatError(f"{origin}: {key!r}[{i}] is {_brief(label)}, not an int")
        if not 0 <= label < layout.num_classes:
            raise CIFARFormatError(
                f"{origin}: label {_brief(label)} at {key!r}[{i}] is not in "
                f"0..{layout.num_classes - 1}"
            )
    return images, np.array(labels, dtype=np.int64)


# ----------------------------------------------------------------------------------------------
# Finding and reading the files: a folder or the archive.


def _locate(layout: _Layout, data_dir: Path) -> tuple[str, Path]:
    """``("archive", path)`` or ``("folder", path)`` for the data under ``data_dir``."""
    if data_dir.is_file():
        return "archive", data_dir
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data_dir {data_dir} does not exist")
    if (data_dir / layout.folder).is_dir():
        return "folder", data_dir / layout.folder
    names = (*layout.train, *layout.test, layout.meta)
    if any((data_dir / name).is_file() for name in names):
        return "folder", data_dir
    if (data_dir / layout.archive).is_file():
        return "archive", data_dir / layout.archive
    raise FileNotFoundError(
        f"{data_dir}: no {layout.folder}/ folder, no {layout.archive} and none of the files "
        f"{', '.join(names)} (the official 'python version' of the dataset)"
    )


def _too_big(origin: str, size: int) -> CIFARFormatError:
    return CIFARFormatError(
        f"{origin}: {size} bytes is more than any CIFAR batch ({MAX_BATCH_BYTES} at most)"
    )


def _read_folder(folder: Path, names: tuple[str, ...], layout: _Layout):
    batches = []
    for name in names:
        path = folder / name
        if not path.is_file():
            raise CIFARFormatError(f"{folder}: missing batch {name} ({path} is not a file)")
        origin = str(path)
        if path.stat().st_size > MAX_BATCH_BYTES:
            raise _too_big(origin, path.stat().st_size)
        with open(path, "rb") as f:
            raw = f.read(MAX_BATCH_BYTES + 1)  # the file may have grown since the stat
        if len(raw) > MAX_BATCH_BYTES:
            raise _too_big(origin, len(raw))
        batches.append(_parse_batch(raw, origin, layout))
    return batches


def _read_archive(archive: Path, names: tuple[str, ...], layout: _Layout):
    wanted = {f"{layout.folder}/{name}": name for name in names}
    parsed: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    with open(archive, "rb") as f:  # a missing or unreadable file is the OS's error, as is
        origin = str(archive)
        try:
            with tarfile.open(fileobj=f, mode="r:*") as tar:
                total, count = 0, 0
                for member in tar:
                    # One pass in archive order: a gzip stream is cheap to read forwards only.
                    total, count = total + member.size, count + 1
                    if total > MAX_ARCHIVE_BYTES or count > MAX_ARCHIVE_MEMBERS:
                        raise CIFARFormatError(
                            f"{archive}: more than {MAX_ARCHIVE_MEMBERS} members or "
                            f"{MAX_ARCHIVE_BYTES} bytes, far more than a CIFAR archive holds"
                        )
                    member_name = member.name.removeprefix("./")
                    name = wanted.get(member_name)
                    if name is None or name in parsed:
                        continue
                    origin = f"{archive} (member {member_name})"
                    if not member.isfile():
                        raise CIFARFormatError(f"{origin}: not a regular file")
                    if member.size > MAX_BATCH_BYTES:
                        raise _too_big(origin, member.size)
                    raw = tar.extractfile(member).read()
                    parsed[name] = _parse_batch(raw, origin, layout)
                    origin = str(archive)
                # Read on to the end of the compressed stream even when every batch is in hand:
                # only there does gzip check its CRC and notice a truncated or corrupt archive.
                while chunk := tar.fileobj.read(1 << 20):
                    total += len(chunk)
                    if total > MAX_ARCHIVE_BYTES + 2**20:  # the tar's padding and end blocks
                        raise CIFARFormatError(f"{archive}: trailing data beyond the archive")
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            raise CIFARFormatError(
                f"{origin}: not a readable tar archive, truncated or corrupt "
                f"({type(exc).__name__}: {exc})"
            ) from exc
    missing = [f"{layout.folder}/{name}" for name in names if name not in parsed]
    if missing:
        raise CIFARFormatError(
            f"{archive}: missing batch {', '.join(missing)} (not in the archive, or the archive "
            "is truncated)"
        )
    return [parsed[name] for name in names]


def read_cifar(
    name: str,
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    *,
    official_sizes: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Read one split of CIFAR-10 or CIFAR-100 from the official python-version files.

    Every batch of the split must be present; each is checked: a dict with ``b'data'``, a
    ``uint8`` array ``[N, 3072]``, and as many labels (``b'labels'``, or ``b'fine_labels'`` for
    CIFAR-100) as images, each an int in ``0..9`` (``0..99``). The sizes are checked for
    consistency only, so that small files in the same format read too; ``official_sizes=True``
    also requires the published counts (CIFAR-10: five training batches of 10,000 and a test
    batch of 10,000; CIFAR-100: 50,000 training and 10,000 test images).

    Args:
        name (str): ``"cifar10"`` or ``"cifar100"``.
        split (str): ``"train"`` or ``"test"``. Default: ``"train"``.
        data_dir (str or PathLike): the extracted folder (``cifar-10-batches-py`` or
            ``cifar-100-python``), the directory holding it, the ``.tar.gz`` archive itself
            (read in place, never extracted), or the directory holding the archive. A folder
            is preferred to an archive beside it.
        official_sizes (bool): require the published number of images. Default: False.

    Returns:
        (ndarray[N, 3, 32, 32] uint8 pixels, ndarray[N] int64 labels), batches in their
        official order.

    Raises:
        CIFARFormatError: a batch is missing, truncated, malformed, too large, holds a wrong
            dtype, shape, key or label, or names a global other than numpy's array
            reconstruction (refused before anything runs). The message names the file, or the
            archive and its member.
        FileNotFoundError: ``data_dir`` holds no CIFAR folder, files or archive.
        ValueError, TypeError: a bad ``name``, ``split`` or ``data_dir``.

    Examples::

        >>> import pickle, tempfile, numpy as np
        >>> folder = Path(tempfile.mkdtemp()) / "cifar-10-batches-py"
        >>> folder.mkdir()
        >>> batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [3, 7]}
        >>> _ = (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=4))
        >>> images, labels = read_cifar("cifar10", "test", folder.parent)
        >>> images.shape, labels.tolist()
        ((2, 3, 32, 32), [3, 7])
    """
    if name not in _LAYOUTS:
        raise ValueError(f"name must be one of {', '.join(_LAYOUTS)}; got {name!r}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if data_dir is None:
        raise ValueError(f"data_dir is required for {name!r}: the CIFAR folder or archive")
    if not isinstance(data_dir, (str, os.PathLike)):
        raise TypeError(f"data_dir must be a str or PathLike, got {type(data_dir).__name__}")
    layout = _LAYOUTS[name]
    names = layout.train if split == "train" else layout.test
    kind, path = _locate(layout, Path(data_dir))
    read = _read_folder if kind == "folder" else _read_archive
    batches = read(path, names, layout)
    if official_sizes:
        expected = layout.images_per_file[split]
        for batch_name, (images, _) in zip(names, batches, strict=True):
            if images.shape[0] != expected:
                raise CIFARFormatError(
                    f"{path}: batch {batch_name} holds {images.shape[0]} images; the official "
                    f"{name} {split} batch holds {expected}"
                )
    # One copy into memory the arrays own (the parsed rows are read-only views of the file's
    # bytes); each row is already three 32x32 planes, so the reshape moves nothing.
    images = np.concatenate([images for images, _ in batches]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([labels for _, labels in batches])
    return images, labels
