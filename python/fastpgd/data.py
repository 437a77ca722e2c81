"""Datasets for adversarial training: digits (shipped), MNIST/Fashion-MNIST (IDX), CIFAR, synthetic.

- ``digits``: the 1797 real 8x8 handwritten digits of the UCI "Optical Recognition of Handwritten
  Digits" set (E. Alpaydin, C. Kaynak; CC BY 4.0), shipped inside the package so that training
  works offline with nothing else installed. Pixels take the 17 values 0..16, scaled to [0, 1].
  A fixed permutation splits them 80/20 into train (1437) and test (360).
- ``mnist`` and ``fashion-mnist``: the standard IDX files (``train-images-idx3-ubyte``,
  ``train-labels-idx1-ubyte``, ``t10k-...``), raw or gzip-compressed as distributed, read by a
  strict reader: a truncated, padded or corrupt file raises :class:`IDXFormatError` naming the
  file instead of yielding a short dataset.
- ``cifar10`` and ``cifar100``: the official "python version" (the extracted folder or the
  ``.tar.gz`` archive), read by :func:`fastpgd.cifar.read_cifar`, which never lets the pickles
  run code and raises :class:`~fastpgd.cifar.CIFARFormatError` naming the file for anything
  malformed.
- ``synthetic``: seeded random class-template images of any size, for benchmarks and tests.

Everything is read with numpy and held in memory as one tensor; a batch is fetched with one
fancy-indexing call (see :class:`ImageDataset`), which is far cheaper than collating single items.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fastpgd.cifar import CIFAR_CLASSES, CIFARFormatError, read_cifar

__all__ = [
    "CIFARFormatError",
    "DATASETS",
    "IDXFormatError",
    "ImageDataset",
    "load_dataset",
    "load_digits",
    "load_idx_split",
    "read_idx",
    "synthetic",
]

#: Names accepted by :func:`load_dataset`.
DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "synthetic")


#: Where Debian's ``dataset-fashion-mnist`` package puts the files; the default ``data_dir``
#: of ``fashion-mnist`` when it exists.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

_IDX_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
_IDX_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension
_DIGITS_FILE = "digits.csv.gz"
_DIGITS_SPLIT_SEED = 0  # fixed: the split is part of the dataset's definition, not of a run
_DIGITS_TRAIN_FRACTION = 0.8


class IDXFormatError(ValueError):
    """An IDX file is truncated, padded, corrupt, or not the kind of file expected."""


@dataclass
class ImageDataset(torch.utils.data.Dataset):
    """Images and labels held in memory; indexing with a list of indices returns a whole batch.

    Args:
        images (Tensor[N, C, H, W]): pixels, ``uint8`` or floating point.
        labels (Tensor[N]): class indices, ``int64``.
        scale (float): images are divided by it when fetched, so that pixels lie in [0, 1]
            (16 for digits, 255 for MNIST, 1 for float images). Default: 1.
        num_classes (int): number of classes. Default: 10.
        name (str): a name for messages and checkpoints. Default: ``""``.

    Examples::

        >>> ds = synthetic(8, image_size=4)
        >>> x, y = ds[[0, 1, 2]]
        >>> x.shape, y.shape
        (torch.Size([3, 1, 4, 4]), torch.Size([3]))
    """

    images: torch.Tensor
    labels: torch.Tensor
    scale: float = 1.0
    num_classes: int = 10
    name: str = ""

    def __post_init__(self) -> None:
        if self.images.dim() != 4:
            raise ValueError(f"images must have shape [N, C, H, W], got {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"labels must have shape [{self.images.shape[0]}], got {tuple(self.labels.shape)}"
            )
        if self.labels.numel() and (
            int(self.labels.min()) < 0 or int(self.labels.max()) >= self.num_classes
        ):
            raise ValueError(f"labels must lie in [0, {self.num_classes}) for {self.name!r}")

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index):
        x = self.images[index].to(torch.float32)
        if self.scale != 1.0:
            x = x / self.scale  # never in place: x may be a view of the stored images
        return x, self.labels[index]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return tuple(self.images.shape[1:])


# ----------------------------------------------------------------------------------------------
# digits


def _package_file(name: str) -> Path:
    return Path(__file__).resolve().parent / "datasets" / name


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """Read the 1797 shipped 8x8 digits.

    Returns:
        (ndarray[1797, 8, 8] uint8 with values 0..16, ndarray[1797] int64 labels 0..9)

    Examples::

        >>> images, labels = load_digits()
        >>> images.shape, int(images.max()), sorted(set(labels.tolist())) == list(range(10))
        ((1797, 8, 8), 16, True)
    """
    path = _package_file(_DIGITS_FILE)
    if not path.is_file():
        raise FileNotFoundError(
            f"the digits data file is missing from the installed package ({path}); "
            "reinstall fastpgd"
        )
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if table.shape != (1797, 65):
        raise ValueError(f"{path}: expected 1797 rows of 65 values, got shape {table.shape}")
    pixels, labels = table[:, :64], table[:, 64]
    if pixels.min() < 0 or pixels.max() > 16 or labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"{path}: values out of range (pixels 0..16, labels 0..9)")
    return pixels.reshape(-1, 8, 8).astype(np.uint8), labels


def _digits_split(split: str) -> ImageDataset:
    images, labels = load_digits()
    order = np.random.default_rng(_DIGITS_SPLIT_SEED).permutation(len(labels))
    n_train = int(_DIGITS_TRAIN_FRACTION * len(labels))  # 1437 train, 360 test
    idx = order[:n_train] if split == "train" else order[n_train:]
    return ImageDataset(
        torch.from_numpy(images[idx]).unsqueeze(1).contiguous(),
        torch.from_numpy(labels[idx]),
        scale=16.0,
        name="digits",
    )


# ----------------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        head = f.read(2)
        f.seek(0)
        raw = f.read()
    # Decide by content, not by name: files are sometimes decompressed but keep ".gz".
    if head != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise IDXFormatError(f"{path}: not a valid gzip stream ({exc})") from exc


def read_idx(path: str | os.PathLike, magic: int | None = None) -> np.ndarray:
    """Read one IDX file of unsigned bytes (raw or gzip-compressed), checking it strictly.

    The header is a 4-byte big-endian magic number (two zero bytes, the type code 0x08 for
    unsigned bytes, the number of dimensions) followed by one big-endian 4-byte size per
    dimension; the payload must hold exactly the product of the sizes in bytes.

    Args:
        path (str or PathLike): the file.
        magic (int, optional): the magic number required, e.g. ``0x00000803`` for images
            or ``0x00000801`` for labels. Default: any unsigned-byte IDX file.

    Returns:
        ndarray (uint8) of the shape the header gives.

    Raises:
        IDXFormatError: wrong magic number, zero or missing dimensions, a payload shorter or
            longer than the header says, or a broken gzip stream. The message names the file.
        FileNotFoundError: the file does not exist.

    Examples::

        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "labels")
        >>> _ = open(p, "wb").write(bytes([0, 0, 8, 1, 0, 0, 0, 2, 7, 3]))
        >>> read_idx(p, magic=0x00000801).tolist()
        [7, 3]
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise IDXFormatError(f"{path}: too short for an IDX header ({len(data)} bytes)")
    (found,) = struct.unpack(">I", data[:4])
    if found >> 16 != 0 or (found >> 8) & 0xFF != 0x08:
        raise IDXFormatError(
            f"{path}: bad magic number 0x{found:08x}; expected an unsigned-byte IDX file "
            "(0x000008NN)"
        )
    if magic is not None and found != magic:
        raise IDXFormatError(f"{path}: magic number 0x{found:08x}, expected 0x{magic:08x}")
    ndim = found & 0xFF
    if ndim == 0:
        raise IDXFormatError(f"{path}: header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXFormatError(
            f"{path}: truncated header: {ndim} dimensions need {header} bytes, file has {len(data)}"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if any(d == 0 for d in dims[1:]):
        raise IDXFormatError(f"{path}: zero-sized dimension in {dims}")
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has extra bytes"
        raise IDXFormatError(
            f"{path}: {what}: dimensions {dims} need {expected} bytes, file has {len(data)}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _find_idx(data_dir: Path, stem: str) -> Path:
    # The canonical names, and the "train-images.idx3-ubyte" spelling of some mirrors.
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        if (data_dir / name).is_file():
            return data_dir / name
    raise FileNotFoundError(f"{data_dir}: no {stem} or {stem}.gz (the standard IDX file names)")


def load_idx_split(data_dir: str | os.PathLike, split: str = "train", name: str = "mnist"):
    """Load the train or test split of an MNIST-format dataset from its IDX files.

    Args:
        data_dir (str or PathLike): the directory holding ``train-images-idx3-ubyte[.gz]``,
            ``train-labels-idx1-ubyte[.gz]``, ``t10k-images-idx3-ubyte[.gz]`` and
            ``t10k-labels-idx1-ubyte[.gz]``.
        split (str): ``"train"`` or ``"test"``. Default: ``"train"``.
        name (str): the dataset's name, for messages. Default: ``"mnist"``.

    Returns:
        ImageDataset: ``uint8`` images ``[N, 1, H, W]`` with ``scale=255``, labels ``[N]``.

    Raises:
        IDXFormatError: a file is malformed, the image and label counts differ, or a label
            is not in 0..9.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    data_dir = Path(data_dir)
    prefix = "train" if split == "train" else "t10k"
    images_path = _find_idx(data_dir, f"{prefix}-images-idx3-ubyte")
    labels_path = _find_idx(data_dir, f"{prefix}-labels-idx1-ubyte")
    images = read_idx(images_path, magic=_IDX_IMAGES_MAGIC)
    labels = read_idx(labels_path, magic=_IDX_LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise IDXFormatError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
            f"{labels.shape[0]} labels"
        )
    if labels.size and labels.max() > 9:
        raise IDXFormatError(f"{labels_path}: label {int(labels.max())} is not in 0..9")
    return ImageDataset(
        torch.from_numpy(images.copy()).unsqueeze(1),
        torch.from_numpy(labels.astype(np.int64)),
        scale=255.0,
        name=name,
    )


# ----------------------------------------------------------------------------------------------
# synthetic


def synthetic(
    n: int,
    *,
    image_size: int = 28,
    channels: int = 1,
    num_classes: int = 10,
    seed: int = 0,
) -> ImageDataset:
    """Seeded random images that a network can learn: a per-class template plus uniform noise.

    Args:
        n (int): number of images.
        image_size (int): height and width. Default: 28.
        channels (int): Default: 1.
        num_classes (int): Default: 10.
        seed (int): the same seed gives the same data. Default: 0.

    Returns:
        ImageDataset: float images ``[n, channels, image_size, image_size]`` in [0, 1].

    Examples::

        >>> torch.equal(synthetic(4, seed=1).images, synthetic(4, seed=1).images)
        True
    """
    for arg, value in (("n", n), ("image_size", image_size), ("channels", channels)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be a positive int, got {value!r}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    g = torch.Generator().manual_seed(seed)
    shape = (channels, image_size, image_size)
    templates = torch.rand((num_classes, *shape), generator=g)
    labels = torch.randint(num_classes, (n,), generator=g)
    noise = torch.rand((n, *shape), generator=g)
    images = 0.5 * templates[labels] + 0.5 * noise
    return ImageDataset(images, labels, scale=1.0, num_classes=num_classes, name="synthetic")


# ----------------------------------------------------------------------------------------------


def load_dataset(
    name: str,
    split: str = "train",
    *,
    data_dir: str | os.PathLike | None = None,
    synthetic_size: int = 1000,
    image_size: int = 28,
    seed: int = 0,
) -> ImageDataset:
    """Load one split of a named dataset.

    Args:
        name (str): one of ``"digits"``, ``"mnist"``, ``"fashion-mnist"``, ``"cifar10"``,
            ``"cifar100"``, ``"synthetic"``.
        split (str): ``"train"`` or ``"test"``. Default: ``"train"``.
        data_dir (str or PathLike, optional): the IDX directory of ``mnist`` and
            ``fashion-mnist`` (required for ``mnist``; ``fashion-mnist`` defaults to
            ``/usr/share/datasets/fashion-mnist`` where Debian's package installs it); for
            ``cifar10`` and ``cifar100`` (required) the extracted folder
            (``cifar-10-batches-py``, ``cifar-100-python``), the directory holding it, the
            ``.tar.gz`` archive, or the directory holding the archive (see
            :func:`fastpgd.cifar.read_cifar`).
        synthetic_size (int): images in the synthetic train split; the test split holds a
            fifth as many (at least one). Default: 1000.
        image_size (int): side of the synthetic images. Default: 28.
        seed (int): seed of the synthetic data; both splits share the class templates and
            the test images are further draws from the same seed. Default: 0.

    Returns:
        ImageDataset: CIFAR images are stored as ``uint8`` ``[N, 3, 32, 32]`` with
        ``scale=255`` (a quarter of the memory of float32) and fetched as float32 in [0, 1].

    Raises:
        CIFARFormatError: a CIFAR file is missing, malformed, or asks to run code.
        IDXFormatError: an IDX file is malformed.

    Examples::

        >>> ds = load_dataset("digits", "test")
        >>> len(ds), ds.image_shape
        (360, (1, 8, 8))
    """
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}; got {name!r}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if name == "digits":
        return _digits_split(split)
    if name == "synthetic":
        n = synthetic_size if split == "train" else max(1, synthetic_size // 5)
        if split == "train":
            return synthetic(n, image_size=image_size, seed=seed)
        # One draw for both: the test images share the class templates (so a trained model
        # generalises) and are the images after the training ones.
        ds = synthetic(synthetic_size + n, image_size=image_size, seed=seed)
        return ImageDataset(
            ds.images[synthetic_size:].clone(), ds.labels[synthetic_size:].clone(), name="synthetic"
        )
    if name in CIFAR_CLASSES:
        images, labels = read_cifar(name, split, data_dir)
        return ImageDataset(
            torch.from_numpy(images),
            torch.from_numpy(labels),
            scale=255.0,
            num_classes=CIFAR_CLASSES[name],
            name=name,
        )
    if data_dir is None:
        if name == "fashion-mnist" and DEBIAN_FASHION_MNIST.is_dir():
            data_dir = DEBIAN_FASHION_MNIST
        else:
            raise ValueError(f"data_dir is required for {name!r}: the directory of its IDX files")
    return load_idx_split(data_dir, split, name=name)
