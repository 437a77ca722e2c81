"""Datasets: the shipped digits, the strict IDX reader, synthetic data."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from fastpgd import data
from fastpgd.data import IDXFormatError, load_dataset, read_idx

FASHION = Path("/usr/share/datasets/fashion-mnist")


def _idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    magic = (0x0800 | array.ndim) if magic is None else magic
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write(path: Path, payload: bytes, gz: bool) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


def _write_split(root: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool):
    _write(root / f"{prefix}-images-idx3-ubyte", _idx_bytes(images), gz)
    _write(root / f"{prefix}-labels-idx1-ubyte", _idx_bytes(labels), gz)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# -- digits ---------------------------------------------------------------------------------


def test_digits_file_and_licence_ship_with_the_package():
    root = Path(data.__file__).resolve().parent / "datasets"
    assert (root / "digits.csv.gz").is_file()
    licence = (root / "DIGITS_LICENSE.txt").read_text()
    for words in ("CC BY 4.0", "Alpaydin", "Kaynak", "unmodified"):
        assert words in licence


def test_digits_raw_values():
    images, labels = data.load_digits()
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8
    assert images.min() == 0 and images.max() == 16
    assert np.bincount(labels).min() > 150  # roughly 180 per class


def test_digits_split_is_fixed_disjoint_and_complete():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert (len(train), len(test)) == (1437, 360)
    assert train.image_shape == (1, 8, 8)
    again = load_dataset("digits", "train")
    assert torch.equal(train.images, again.images) and torch.equal(train.labels, again.labels)
    raw, _ = data.load_digits()
    # Together the splits hold every image exactly once.
    both = torch.cat([train.images, test.images]).reshape(1797, -1).numpy()
    key = lambda a: sorted(map(bytes, a))  # noqa: E731
    assert key(both) == key(raw.reshape(1797, -1))


def test_digits_batches_are_scaled_to_unit_range():
    ds = load_dataset("digits", "train")
    x, y = ds[list(range(100))]
    assert x.dtype == torch.float32 and x.shape == (100, 1, 8, 8) and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert torch.equal(x * 16, ds.images[:100].float())  # exact: steps of 1/16
    # A single index does not scale the stored images in place.
    before = ds.images.clone()
    ds[3]
    assert torch.equal(ds.images, before)


# -- IDX reader -----------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_idx_split_round_trip(tmp_path, rng, gz):
    images = rng.integers(0, 256, (7, 5, 6), dtype=np.uint8)
    labels = rng.integers(0, 10, 7, dtype=np.uint8)
    _write_split(tmp_path, "t10k", images, labels, gz)
    ds = data.load_idx_split(tmp_path, "test")
    assert ds.images.shape == (7, 1, 5, 6)
    assert np.array_equal(ds.images[:, 0].numpy(), images)
    assert np.array_equal(ds.labels.numpy(), labels)
    x, _ = ds[[0]]
    assert torch.allclose(x[0, 0], torch.from_numpy(images[0]).float() / 255)


def test_idx_gz_detected_by_content_not_name(tmp_path):
    # A decompressed file that kept its ".gz" name still reads.
    path = tmp_path / "labels.gz"
    path.write_bytes(_idx_bytes(np.array([1, 2, 3])))
    assert read_idx(path, magic=0x801).tolist() == [1, 2, 3]


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize(
    "corrupt, words",
    [
        (lambda b: b[:-1], "truncated"),
        (lambda b: b[:10], "truncated"),
        (lambda b: b[:2], "too short"),
        (lambda b: b + b"\x00", "extra bytes"),
        (lambda b: b"\x00\x00\x08\x01" + b[4:], "magic"),  # labels magic on an images file
        (lambda b: b"\x12\x34\x08\x03" + b[4:], "magic"),
        (lambda b: b"\x00\x00\x0d\x03" + b[4:], "magic"),  # float type: not unsigned bytes
        (lambda b: b[:8] + struct.pack(">I", 0) + b[12:], "zero-sized"),
        (lambda b: b[:8] + struct.pack(">I", 9) + b[12:], "truncated"),  # wrong dims
        (lambda b: b[:8] + struct.pack(">I", 2) + b[12:], "extra bytes"),  # wrong dims
    ],
    ids=[
        "short-1",
        "short-header",
        "no-header",
        "extra",
        "labels-magic",
        "bad-magic",
        "float-type",
        "zero-dim",
        "dims-too-big",
        "dims-too-small",
    ],  # fmt: skip
)
def test_idx_images_errors_name_the_file(tmp_path, rng, gz, corrupt, words):
    good = _idx_bytes(rng.integers(0, 256, (4, 3, 3), dtype=np.uint8))
    path = _write(tmp_path / "train-images-idx3-ubyte", corrupt(good), gz)
    with pytest.raises(IDXFormatError, match=words) as info:
        read_idx(path, magic=0x803)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_idx_bad_gzip_stream(tmp_path, rng):
    stream = gzip.compress(_idx_bytes(rng.integers(0, 256, (50, 8, 8), dtype=np.uint8)))
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(stream[: len(stream) // 2])
    with pytest.raises(IDXFormatError, match="gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)
    flipped = bytearray(stream)
    flipped[len(flipped) // 2] ^= 0xFF
    path.write_bytes(bytes(flipped))
    with pytest.raises(IDXFormatError, match="gzip"):
        read_idx(path)


def test_idx_count_mismatch(tmp_path, rng):
    _write_split(tmp_path, "train", rng.integers(0, 256, (5, 4, 4), dtype=np.uint8),
                 rng.integers(0, 10, 4, dtype=np.uint8), gz=False)  # fmt: skip
    with pytest.raises(IDXFormatError, match="5 images but .* 4 labels"):
        data.load_idx_split(tmp_path, "train")


def test_idx_label_out_of_range(tmp_path, rng):
    _write_split(tmp_path, "train", rng.integers(0, 256, (2, 4, 4), dtype=np.uint8),
                 np.array([3, 10], dtype=np.uint8), gz=True)  # fmt: skip
    with pytest.raises(IDXFormatError, match="label 10"):
        data.load_idx_split(tmp_path, "train")


def test_idx_missing_files_and_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        data.load_idx_split(tmp_path, "train")
    with pytest.raises(ValueError, match="split"):
        data.load_idx_split(tmp_path, "valid")
    with pytest.raises(ValueError, match="data_dir"):
        load_dataset("mnist", "train")
    with pytest.raises(ValueError, match="dataset must be one of"):
        load_dataset("imagenet")


@pytest.mark.skipif(not FASHION.is_dir(), reason="needs Debian's dataset-fashion-mnist package")
def test_real_fashion_mnist():
    test = load_dataset("fashion-mnist", "test", data_dir=FASHION)
    assert len(test) == 10_000 and test.image_shape == (1, 28, 28)
    assert np.array_equal(np.bincount(test.labels.numpy()), np.full(10, 1000))
    train = load_dataset("fashion-mnist", "train")  # the Debian directory is the default
    assert len(train) == 60_000
    assert int(train.images.max()) == 255


# -- synthetic ------------------------------------------------------------------------------


def test_synthetic_seeded_and_in_range():
    a, b, c = data.synthetic(30, image_size=5, seed=3), data.synthetic(30, image_size=5, seed=3), \
        data.synthetic(30, image_size=5, seed=4)  # fmt: skip
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    assert a.images.shape == (30, 1, 5, 5)
    assert 0 <= float(a.images.min()) <= float(a.images.max()) <= 1
    train = load_dataset("synthetic", "train", synthetic_size=40, image_size=6)
    test = load_dataset("synthetic", "test", synthetic_size=40, image_size=6)
    assert (len(train), len(test)) == (40, 8)
    assert not any(torch.equal(t, s) for t in test.images for s in train.images)


@pytest.mark.parametrize("kwargs, words", [
    (dict(n=0), "n must"), (dict(n=3, image_size=0), "image_size"),
    (dict(n=3, num_classes=1), "num_classes"),
])  # fmt: skip
def test_synthetic_bad_arguments(kwargs, words):
    with pytest.raises(ValueError, match=words):
        data.synthetic(**kwargs)


def test_image_dataset_checks_shapes_and_labels():
    with pytest.raises(ValueError, match="images"):
        data.ImageDataset(torch.zeros(3, 8, 8), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="labels must have shape"):
        data.ImageDataset(torch.zeros(3, 1, 8, 8), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="labels must lie"):
        data.ImageDataset(torch.zeros(2, 1, 8, 8), torch.tensor([0, 10]))
