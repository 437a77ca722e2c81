"""CIFAR-10/100 reader: the official python-version files, read without letting pickles run code.

The tests write small files in the real format: Python 2 pickles (protocol 2, every string a
Python 2 byte string, so keys arrive as bytes; numpy arrays through numpy.core.multiarray's
reconstructor, as numpy 1.x wrote them).
"""

from __future__ import annotations

import collections
import doctest
import io
import os
import pickle
import re
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from fastpgd import cifar, data
from fastpgd.cifar import CIFARFormatError, read_cifar
from fastpgd.data import load_dataset

FOLDER = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
ARCHIVE = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}
FILES = {
    "cifar10": {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
    "cifar100": {"train": ["train"], "test": ["test"]},
}
CLASSES = {"cifar10": 10, "cifar100": 100}


class _Py2Pickler(pickle._Pickler):
    """Writes every str and bytes as a Python 2 byte string (SHORT_BINSTRING / BINSTRING)."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_string(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[str] = _save_py2_string
    dispatch[bytes] = _save_py2_string


def py2_pickle(obj) -> bytes:
    f = io.BytesIO()
    _Py2Pickler(f, protocol=2).dump(obj)
    # numpy >= 2 names its reconstructor numpy._core.multiarray; the published files, written
    # with numpy 1.x, name numpy.core.multiarray. A GLOBAL opcode is plain "module\nname\n".
    return f.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def make_batch(rng, n: int, name: str) -> dict:
    batch = {
        b"batch_label": b"training batch 1 of 5",
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }
    labels = rng.integers(0, CLASSES[name], n).tolist()
    if name == "cifar10":
        batch[b"labels"] = labels
    else:
        batch[b"fine_labels"] = labels
        batch[b"coarse_labels"] = [label // 5 for label in labels]  # 20 superclasses
    return batch


def write_folder(root: Path, name: str, rng, n: int = 4, batches: dict | None = None) -> dict:
    """Write every batch (and the meta file) of ``name`` under ``root``; return the batches."""
    folder = root / FOLDER[name]
    folder.mkdir(parents=True)
    batches = batches or {}
    written = {}
    for split in ("train", "test"):
        for i, file in enumerate(FILES[name][split]):
            # n, n + 1, ... images: batches of different sizes catch a mix-up of their order.
            batch = batches[file] if file in batches else make_batch(rng, n + i, name)
            written[file] = batch
            payload = batch if isinstance(batch, bytes) else py2_pickle(batch)
            (folder / file).write_bytes(payload)
    meta = {"cifar10": "batches.meta", "cifar100": "meta"}[name]
    (folder / meta).write_bytes(py2_pickle({b"label_names": [b"class"] * CLASSES[name]}))
    return written


def write_archive(root: Path, name: str, path: Path | None = None, mode: str = "w:gz") -> Path:
    """Pack the folder written under ``root`` into the official archive name (or ``path``)."""
    path = path or root / ARCHIVE[name]
    with tarfile.open(path, mode) as tar:
        tar.add(root / FOLDER[name], arcname=FOLDER[name])
    return path


def expected(batches: dict, name: str, split: str):
    key = b"labels" if name == "cifar10" else b"fine_labels"
    rows = np.concatenate([batches[f][b"data"] for f in FILES[name][split]])
    labels = sum((batches[f][key] for f in FILES[name][split]), [])
    return rows, np.array(labels, dtype=np.int64)


@pytest.fixture
def rng():
    return np.random.default_rng(2024)


# -- reading the real format ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("where", ["parent", "folder", "archive", "archive-parent"])
def test_reads_every_layout(tmp_path, rng, name, split, where):
    batches = write_folder(tmp_path / "src", name, rng)
    if where == "parent":
        data_dir = tmp_path / "src"
    elif where == "folder":
        data_dir = tmp_path / "src" / FOLDER[name]
    else:
        (tmp_path / "arc").mkdir()
        archive = write_archive(tmp_path / "src", name, tmp_path / "arc" / ARCHIVE[name])
        data_dir = archive if where == "archive" else archive.parent
    rows, labels = expected(batches, name, split)

    images, got_labels = read_cifar(name, split, data_dir)
    assert images.dtype == np.uint8 and images.shape == (len(rows), 3, 32, 32)
    assert np.array_equal(images.reshape(len(rows), -1), rows)  # batches in official order
    assert got_labels.dtype == np.int64 and np.array_equal(got_labels, labels)

    ds = load_dataset(name, split, data_dir=data_dir)
    assert isinstance(ds, data.ImageDataset)
    assert (ds.num_classes, ds.name, ds.image_shape) == (CLASSES[name], name, (3, 32, 32))
    x, y = ds[list(range(len(ds)))]
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    assert torch.equal(x, torch.from_numpy(rows).float().view(-1, 3, 32, 32) / 255)
    assert torch.equal(y, torch.from_numpy(labels))


def test_channel_planes_and_row_major_pixels(tmp_path, rng):
    # Row layout: 1024 red, then 1024 green, then 1024 blue bytes, each plane row-major 32x32.
    batch = make_batch(rng, 1, "cifar10")
    row = np.zeros(3072, np.uint8)
    row[:1024], row[1024:2048], row[2048:] = 10, 20, 30
    row[1024 + 1 * 32 + 2] = 255  # green, row 1, column 2
    batch[b"data"] = row[None]
    write_folder(tmp_path, "cifar10", rng, batches={"test_batch": batch})
    images, _ = read_cifar("cifar10", "test", tmp_path)
    assert images[0, 0].min() == images[0, 0].max() == 10
    assert images[0, 2].min() == images[0, 2].max() == 30
    assert images[0, 1, 1, 2] == 255 and int((images[0, 1] == 20).sum()) == 1023


def test_cifar100_reads_the_fine_labels(tmp_path, rng):
    batch = make_batch(rng, 3, "cifar100")
    batch[b"fine_labels"], batch[b"coarse_labels"] = [99, 0, 57], [19, 0, 11]
    write_folder(tmp_path, "cifar100", rng, batches={"test": batch})
    assert read_cifar("cifar100", "test", tmp_path)[1].tolist() == [99, 0, 57]


@pytest.mark.parametrize("writer", ["numpy-1.x-python-2", "numpy-2-python-2", "python-3"])
def test_the_pickles_each_numpy_and_python_wrote(tmp_path, rng, writer):
    batch = make_batch(rng, 2, "cifar10")
    if writer == "numpy-1.x-python-2":
        raw = py2_pickle(batch)
        assert b"cnumpy.core.multiarray\n_reconstruct\n" in raw
    elif writer == "numpy-2-python-2":
        f = io.BytesIO()
        _Py2Pickler(f, protocol=2).dump(batch)
        raw = f.getvalue()
        assert b"cnumpy._core.multiarray\n_reconstruct\n" in raw
    else:  # a copy re-saved by Python 3 (bytes as BINBYTES)
        raw = pickle.dumps(batch, protocol=4)
    write_folder(tmp_path, "cifar10", rng, batches={"test_batch": raw})
    images, labels = read_cifar("cifar10", "test", tmp_path)
    assert np.array_equal(images.reshape(2, -1), batch[b"data"])
    assert labels.tolist() == batch[b"labels"]


def test_python_2_dtype_arguments_and_fortran_order(tmp_path, rng):
    # numpy 1.x under Python 2 wrote dtype('u1', 0, 1); an array may be stored column-major.
    batch = make_batch(rng, 3, "cifar10")
    rows = batch[b"data"]
    batch[b"data"] = np.asfortranarray(rows)
    raw, edits = re.subn(rb"(U\x02u1q.)\x89\x88", b"\\1K\x00K\x01", py2_pickle(batch), flags=re.S)
    assert edits == 1  # 'u1', False, True became 'u1', 0, 1
    write_folder(tmp_path, "cifar10", rng, batches={"test_batch": raw})
    images, _ = read_cifar("cifar10", "test", tmp_path)
    assert np.array_equal(images.reshape(3, -1), rows)


def test_a_folder_wins_over_an_archive_beside_it(tmp_path, rng):
    write_folder(tmp_path, "cifar10", rng)
    archive = write_archive(tmp_path, "cifar10")
    archive.write_bytes(b"not an archive")  # would fail if it were read
    assert len(read_cifar("cifar10", "test", tmp_path)[0]) == 4


def test_uncompressed_tar_and_dot_slash_names(tmp_path, rng):
    batches = write_folder(tmp_path / "src", "cifar10", rng)
    path = tmp_path / "cifar-10-python.tar"
    with tarfile.open(path, "w") as tar:
        tar.add(tmp_path / "src" / FOLDER["cifar10"], arcname="./" + FOLDER["cifar10"])
    images, labels = read_cifar("cifar10", "train", path)
    rows, want = expected(batches, "cifar10", "train")
    assert np.array_equal(images.reshape(len(rows), -1), rows) and np.array_equal(labels, want)


def test_archive_is_read_in_place_not_extracted(tmp_path, rng):
    write_folder(tmp_path / "src", "cifar10", rng)
    (tmp_path / "arc").mkdir()
    archive = write_archive(tmp_path / "src", "cifar10", tmp_path / "arc" / ARCHIVE["cifar10"])
    read_cifar("cifar10", "train", archive.parent)
    assert sorted(p.name for p in (tmp_path / "arc").iterdir()) == [ARCHIVE["cifar10"]]


def test_official_sizes(tmp_path, rng):
    batch = make_batch(rng, 10_000, "cifar10")
    write_folder(tmp_path, "cifar10", rng, batches={"test_batch": batch})
    images, _ = read_cifar("cifar10", "test", tmp_path, official_sizes=True)
    assert images.shape == (10_000, 3, 32, 32)
    with pytest.raises(CIFARFormatError, match="data_batch_1 holds 4 images; the official"):
        read_cifar("cifar10", "train", tmp_path, official_sizes=True)


# -- refusing to run code -------------------------------------------------------------------


class _Evil:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _evil_batches(rng, marker: Path):
    """Batches whose unrestricted unpickling creates ``marker`` (or runs a shell command)."""
    good = make_batch(rng, 2, "cifar10")
    return {
        "open-as-data": {**good, b"data": _Evil(open, str(marker), "w")},
        "system-as-batch": _Evil(os.system, f"touch {marker}"),
        "open-inside-labels": {**good, b"labels": [1, _Evil(open, str(marker), "w")]},
        "eval": {**good, b"batch_label": _Evil(eval, f"open({str(marker)!r}, 'w')")},
    }


def test_the_evil_pickles_really_are_evil(tmp_path, rng):
    # Guard for the tests below: an unrestricted load of these files does create the marker.
    marker = tmp_path / "pwned"
    for kind, batch in _evil_batches(rng, marker).items():
        if kind == "system-as-batch":
            continue  # one shell-free proof is enough
        loaded = pickle.loads(py2_pickle(batch), encoding="latin1")
        opened = [v for v in (*loaded.values(), *loaded["labels"]) if isinstance(v, io.IOBase)]
        assert len(opened) == 1 and marker.exists(), kind
        opened[0].close()
        marker.unlink()


@pytest.mark.parametrize("kind, glob", [
    ("open-as-data", "io.open"), ("system-as-batch", f"{os.system.__module__}.system"),
    ("open-inside-labels", "io.open"), ("eval", "__builtin__.eval"),
])  # fmt: skip
@pytest.mark.parametrize("packed", [False, True], ids=["folder", "archive"])
def test_malicious_pickle_is_refused_before_it_runs(tmp_path, rng, kind, glob, packed):
    marker = tmp_path / "pwned"
    evil = _evil_batches(rng, marker)[kind]
    write_folder(tmp_path / "src", "cifar10", rng, batches={"data_batch_2": py2_pickle(evil)})
    src = tmp_path / "src"
    data_dir = write_archive(src, "cifar10") if packed else src
    with pytest.raises(CIFARFormatError, match=f"refused to load the global {glob}") as info:
        load_dataset("cifar10", "train", data_dir=data_dir)
    assert not marker.exists()
    where = f"{data_dir} (member {FOLDER['cifar10']}/data_batch_2)" if packed else \
        str(src / FOLDER["cifar10"] / "data_batch_2")  # fmt: skip
    assert where in str(info.value)


# -- every malformed file is one clear error naming it --------------------------------------


def _persistent(batch):
    class P(_Py2Pickler):
        def persistent_id(self, obj):
            return "ext-1" if isinstance(obj, list) else None

    f = io.BytesIO()
    P(f, protocol=2).dump(batch)
    return f.getvalue()


def _huge_claim(batch):
    # A 3,072-byte array whose header claims 10**12 rows: refused without allocating them.
    one = {**batch, b"data": batch[b"data"][:1], b"labels": batch[b"labels"][:1]}
    raw = py2_pickle(one)
    old = b"K\x01M\x00\x0c\x86"  # the shape tuple (1, 3072)
    assert raw.count(old) == 1
    return raw.replace(old, b"\x8a\x06" + (10**12).to_bytes(6, "little") + b"M\x00\x0c\x86")


BAD = {
    # case: (turn a good batch dict into the bytes of a bad file, words of the message)
    "truncated": (lambda b: py2_pickle(b)[:-500], "truncated"),
    "cut-short": (lambda b: py2_pickle(b)[:40], "truncated"),
    "not-a-pickle": (lambda b: b"\x1f\x8b\x08 gzip, not a pickle", "not a readable CIFAR pickle"),
    "empty": (lambda b: b"", "not a readable CIFAR pickle"),
    "not-a-dict": (lambda b: py2_pickle([b[b"data"], b[b"labels"]]), "expected a dict"),
    "missing-data": (lambda b: py2_pickle({k: v for k, v in b.items() if k != b"data"}),
                     "no key b'data'"),
    "missing-labels": (lambda b: py2_pickle({k: v for k, v in b.items() if k != b"labels"}),
                       "no key b'labels'"),
    "str-keys": (lambda b: pickle.dumps({k.decode(): v for k, v in b.items()}, protocol=4),
                 "no key b'data'"),
    "wrong-width": (lambda b: py2_pickle({**b, b"data": b[b"data"][:, :3000]}),
                    r"shape \(4, 3000\), expected \(N, 3072\)"),
    "three-dims": (lambda b: py2_pickle({**b, b"data": b[b"data"].reshape(4, 3, 1024)}),
                   r"shape \(4, 3, 1024\)"),
    "float-dtype": (lambda b: py2_pickle({**b, b"data": b[b"data"].astype(np.float32)}),
                    "dtype b'f4' is not allowed"),
    "int64-dtype": (lambda b: py2_pickle({**b, b"data": b[b"data"].astype(np.int64)}),
                    "dtype b'i8' is not allowed"),
    "data-not-array": (lambda b: py2_pickle({**b, b"data": b[b"data"].tobytes()}),
                       "not a numpy uint8 array"),
    "label-too-big": (lambda b: py2_pickle({**b, b"labels": [0, 1, 2, 10]}), "label 10 at"),
    "label-negative": (lambda b: py2_pickle({**b, b"labels": [0, -1, 2, 3]}), "label -1 at"),
    "label-huge": (lambda b: py2_pickle({**b, b"labels": [0, 1, 2, 2**63]}),
                   "label 9223372036854775808 at b'labels'.3. is not in 0..9"),
    "label-enormous": (lambda b: py2_pickle({**b, b"labels": [0, 1, 2, 10**6000]}),
                       "label <int of 19932 bits> at b'labels'.3."),
    "label-tuple": (lambda b: py2_pickle({**b, b"labels": [0, 1, 2, (10**6000, b"x" * 10**6)]}),
                    r".3. is \(<int of 19932 bits>, b'xxxxxxxxxxxxxxxxxxxxxxxx'...\), not an"),
    "label-float": (lambda b: py2_pickle({**b, b"labels": [0, 1.0, 2, 3]}), "not an int"),
    "label-bool": (lambda b: py2_pickle({**b, b"labels": [0, True, 2, 3]}), "not an int"),
    "labels-array": (lambda b: py2_pickle({**b, b"labels": np.array(b[b"labels"], np.uint8)}),
                     "is a numpy array, not a list of ints"),
    "fewer-labels": (lambda b: py2_pickle({**b, b"labels": b[b"labels"][:3]}),
                     "4 images but 3 labels"),
    "more-labels": (lambda b: py2_pickle({**b, b"labels": b[b"labels"] + [1]}),
                    "4 images but 5 labels"),
    "foreign-global": (lambda b: py2_pickle(collections.OrderedDict(b)),
                       "refused to load the global collections.OrderedDict"),
    "python-3-protocol-2": (lambda b: pickle.dumps(b, protocol=2),
                            "refused to load the global _codecs.encode"),
    "persistent-id": (_persistent, "refused a persistent id"),
    "huge-shape-claim": (_huge_claim, "needs 3072000000000000 bytes, the file holds 3072"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
@pytest.mark.parametrize("packed", [False, True], ids=["folder", "archive"])
def test_bad_batch_is_a_clear_error_naming_the_file(tmp_path, rng, case, packed):
    corrupt, words = BAD[case]
    bad = corrupt(make_batch(rng, 4, "cifar10"))
    write_folder(tmp_path / "src", "cifar10", rng, batches={"data_batch_3": bad})
    src = tmp_path / "src"
    data_dir = write_archive(src, "cifar10") if packed else src
    with pytest.raises(CIFARFormatError, match=words) as info:
        load_dataset("cifar10", "train", data_dir=data_dir)
    assert isinstance(info.value, ValueError)
    where = f"{data_dir} (member {FOLDER['cifar10']}/data_batch_3)" if packed else \
        str(src / FOLDER["cifar10"] / "data_batch_3")  # fmt: skip
    assert str(info.value).startswith(where + ": ")
    # The other split's files are fine and still read.
    assert len(load_dataset("cifar10", "test", data_dir=data_dir)) == 4


def test_cifar100_label_range(tmp_path, rng):
    batch = make_batch(rng, 2, "cifar100")
    batch[b"fine_labels"] = [99, 100]
    write_folder(tmp_path, "cifar100", rng, batches={"test": batch})
    with pytest.raises(CIFARFormatError, match=r"label 100 at b'fine_labels'\[1\] .* 0\.\.99"):
        read_cifar("cifar100", "test", tmp_path)


@pytest.mark.parametrize("packed", [False, True], ids=["folder", "archive"])
def test_missing_batch(tmp_path, rng, packed):
    write_folder(tmp_path / "src", "cifar10", rng)
    (tmp_path / "src" / FOLDER["cifar10"] / "data_batch_3").unlink()
    data_dir = write_archive(tmp_path / "src", "cifar10") if packed else tmp_path / "src"
    missing = f"{FOLDER['cifar10']}/data_batch_3" if packed else "data_batch_3"
    with pytest.raises(CIFARFormatError, match=f"missing batch {missing}") as info:
        read_cifar("cifar10", "train", data_dir)
    assert str(data_dir) in str(info.value)
    assert len(read_cifar("cifar10", "test", data_dir)[0]) == 4  # the test split is complete


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, 0.999])
def test_truncated_archive(tmp_path, rng, keep):
    write_folder(tmp_path / "src", "cifar10", rng, n=40)
    archive = write_archive(tmp_path / "src", "cifar10")
    whole = archive.read_bytes()
    archive.write_bytes(whole[: int(len(whole) * keep)])
    with pytest.raises(CIFARFormatError, match="truncated") as info:
        read_cifar("cifar10", "train", archive)
    assert str(archive) in str(info.value)


def test_truncated_uncompressed_tar_is_a_missing_batch(tmp_path, rng):
    write_folder(tmp_path / "src", "cifar10", rng)
    path = write_archive(tmp_path / "src", "cifar10", tmp_path / "c.tar", mode="w")
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CIFARFormatError, match="missing batch|truncated") as info:
        read_cifar("cifar10", "train", path)
    assert str(path) in str(info.value)


def test_not_an_archive(tmp_path):
    path = tmp_path / "cifar-10-python.tar.gz"
    path.write_bytes(b"\x00" * 10 + b"hello")
    with pytest.raises(CIFARFormatError, match="not a readable tar archive") as info:
        read_cifar("cifar10", "train", path)
    assert str(path) in str(info.value)


def test_member_that_is_not_a_regular_file(tmp_path, rng):
    write_folder(tmp_path / "src", "cifar10", rng)
    folder = tmp_path / "src" / FOLDER["cifar10"]
    (folder / "test_batch").unlink()
    (folder / "test_batch").symlink_to(folder / "data_batch_1")
    archive = write_archive(tmp_path / "src", "cifar10")
    with pytest.raises(CIFARFormatError, match="test_batch.*not a regular file"):
        read_cifar("cifar10", "test", archive)


def test_archive_caps(tmp_path, rng, monkeypatch):
    write_folder(tmp_path / "src", "cifar10", rng)
    archive = write_archive(tmp_path / "src", "cifar10")
    monkeypatch.setattr(cifar, "MAX_ARCHIVE_MEMBERS", 3)
    with pytest.raises(CIFARFormatError, match="more than 3 members"):
        read_cifar("cifar10", "test", archive)
    monkeypatch.setattr(cifar, "MAX_ARCHIVE_MEMBERS", 1000)
    monkeypatch.setattr(cifar, "MAX_ARCHIVE_BYTES", 5 * 3072)
    with pytest.raises(CIFARFormatError, match="15360 bytes, far more than a CIFAR archive"):
        read_cifar("cifar10", "test", archive)


def test_gzip_bomb_is_stopped_by_the_cap(tmp_path, monkeypatch):
    # A small archive that claims a 64 MiB member of zeros before the batches.
    path = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(f"{FOLDER['cifar10']}/padding")
        info.size = 64 * 2**20
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    assert path.stat().st_size < 2**20
    monkeypatch.setattr(cifar, "MAX_ARCHIVE_BYTES", 2**20)
    with pytest.raises(CIFARFormatError, match="far more than a CIFAR archive holds"):
        read_cifar("cifar10", "test", path)


@pytest.mark.parametrize("packed", [False, True], ids=["folder", "archive"])
def test_size_cap_is_checked_before_reading(tmp_path, rng, monkeypatch, packed):
    write_folder(tmp_path / "src", "cifar10", rng)
    data_dir = write_archive(tmp_path / "src", "cifar10") if packed else tmp_path / "src"
    monkeypatch.setattr(cifar, "MAX_BATCH_BYTES", 1000)
    with pytest.raises(CIFARFormatError, match="is more than any CIFAR batch") as info:
        read_cifar("cifar10", "test", data_dir)
    assert "test_batch" in str(info.value)


# -- arguments and missing data -------------------------------------------------------------


def test_nothing_there(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py.*cifar-10-python.tar.gz"):
        read_cifar("cifar10", "train", tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_cifar("cifar100", "train", tmp_path / "nope")


def test_cifar100_folder_is_not_taken_for_cifar10(tmp_path, rng):
    write_folder(tmp_path, "cifar100", rng)
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        read_cifar("cifar10", "test", tmp_path / FOLDER["cifar100"])


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="data_dir is required for 'cifar10'"):
        load_dataset("cifar10", "train")
    with pytest.raises(ValueError, match="name must be one of"):
        read_cifar("cifar-10", "train", tmp_path)
    with pytest.raises(ValueError, match="split must be"):
        read_cifar("cifar10", "valid", tmp_path)
    with pytest.raises(TypeError, match="data_dir must be a str or PathLike, got int"):
        read_cifar("cifar10", "train", 3)
    assert {"cifar10", "cifar100"} <= set(data.DATASETS)


def test_published_statistics():
    assert cifar.CIFAR_MEAN["cifar10"] == (0.4914, 0.4822, 0.4465)
    assert cifar.CIFAR_STD["cifar10"] == (0.2471, 0.2435, 0.2616)
    assert cifar.CIFAR_MEAN["cifar100"] == (0.5071, 0.4865, 0.4409)
    assert cifar.CIFAR_STD["cifar100"] == (0.2673, 0.2564, 0.2762)


def test_docstring_examples_run():
    result = doctest.testmod(cifar)
    assert result.attempted > 0 and result.failed == 0
