"""Tests for pyrocg.data against ground truth written by the tests themselves."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from pyrocg.data import (
    DEFAULT_FASHION_MNIST_DIR,
    DataSplits,
    Split,
    batches,
    load_dataset,
    load_digits,
    load_fashion_mnist,
    load_table,
    read_idx,
    split_indices,
    write_idx,
)

# ----------------------------------------------------------------------------- IDX


def _manual_idx(array: np.ndarray, code: int) -> bytes:
    """Reference encoder written from the format spec, independent of write_idx."""
    head = bytes([0, 0, code, array.ndim])
    for s in array.shape:
        head += int(s).to_bytes(4, "big")
    return head + array.astype(array.dtype.newbyteorder(">")).tobytes()


@pytest.mark.parametrize(
    ("dtype", "code"),
    [(np.uint8, 0x08), (np.int8, 0x09), (np.int16, 0x0B), (np.int32, 0x0C),
     (np.float32, 0x0D), (np.float64, 0x0E)],
)  # fmt: skip
@pytest.mark.parametrize("gz", [False, True])
def test_idx_reads_spec_encoded_files(tmp_path: Path, dtype: type, code: int, gz: bool) -> None:
    rng = np.random.default_rng(0)
    arr = (rng.standard_normal((3, 4, 5)) * 50).astype(dtype)
    raw = _manual_idx(arr, code)
    path = tmp_path / ("a.idx.gz" if gz else "a.idx")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize("name", ["x-idx3-ubyte", "x-idx3-ubyte.gz"])
def test_idx_round_trip_and_header_bytes(tmp_path: Path, name: str) -> None:
    arr = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    write_idx(tmp_path / name, arr)
    raw = (tmp_path / name).read_bytes()
    if name.endswith(".gz"):
        assert raw[:2] == b"\x1f\x8b"
        raw = gzip.decompress(raw)
    assert raw[:4] == bytes([0, 0, 0x08, 3])
    assert raw[4:16] == (2).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    np.testing.assert_array_equal(read_idx(tmp_path / name), arr)


def test_idx_truncated_and_corrupt(tmp_path: Path) -> None:
    raw = _manual_idx(np.arange(12, dtype=np.uint8).reshape(3, 4), 0x08)
    cases = {
        "truncated": raw[:-1],
        "padded": raw + b"\x00",
        "header": raw[:6],
        "magic": b"\x01" + raw[1:],
        "code": raw[:2] + b"\x07" + raw[3:],
        "tiny": raw[:2],
    }
    for label, data in cases.items():
        (tmp_path / label).write_bytes(data)
        with pytest.raises(ValueError):
            read_idx(tmp_path / label)
    # A gzip stream cut short (a typical interrupted download).
    (tmp_path / "cut.gz").write_bytes(gzip.compress(raw)[:-10])
    with pytest.raises(ValueError, match="gzip"):
        read_idx(tmp_path / "cut.gz")
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "truncated")


def test_write_idx_rejects_unsupported_dtype(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="dtype"):
        write_idx(tmp_path / "a", np.zeros(3, dtype=np.int64))


# ------------------------------------------------------------------- Fashion-MNIST


def _write_fake_fashion(root: Path, n_train: int = 60, n_test: int = 20, gz: bool = True) -> None:
    rng = np.random.default_rng(1)
    sfx = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        # Encode the label into pixel (0, 0) so the test can check pairing survives splits.
        images[:, 0, 0] = labels * 20
        write_idx(root / f"{prefix}-images-idx3-ubyte{sfx}", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{sfx}", labels)


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_from_written_files(tmp_path: Path, gz: bool) -> None:
    _write_fake_fashion(tmp_path, gz=gz)
    d = load_fashion_mnist(tmp_path, val_size=10)
    assert (len(d.train), len(d.val), len(d.test)) == (50, 10, 20)
    assert d.train.x.shape == (50, 1, 28, 28) and d.train.x.dtype == torch.float32
    assert d.train.y.dtype == torch.int64 and d.num_classes == 10
    assert float(d.train.x.min()) >= 0.0 and float(d.train.x.max()) <= 1.0
    for s in (d.train, d.val, d.test):
        # Pixel (0, 0) was label * 20 / 255: images and labels stay paired.
        torch.testing.assert_close(s.x[:, 0, 0, 0], s.y.float() * 20 / 255)
    assert torch.bincount(d.val.y, minlength=10).tolist() == [1] * 10  # stratified

    flat = load_fashion_mnist(tmp_path, val_size=10, flatten=True, limit=7, seed=3)
    assert flat.train.x.shape == (7, 784) and flat.input_shape == (784,)
    again = load_fashion_mnist(tmp_path, val_size=10, flatten=True, limit=7, seed=3)
    assert torch.equal(flat.train.x, again.train.x)
    # limit never changes the validation split
    full = load_fashion_mnist(tmp_path, val_size=10, flatten=True, seed=3)
    assert torch.equal(flat.val.x, full.val.x) and len(full.train) == 50


def test_fashion_mnist_missing_files_message(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        load_fashion_mnist(tmp_path / "nowhere")
    msg = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "--data-dir" in msg and "train-images-idx3-ubyte" in msg


def test_fashion_mnist_truncated_file(tmp_path: Path) -> None:
    _write_fake_fashion(tmp_path, gz=False)
    p = tmp_path / "t10k-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated"):
        load_fashion_mnist(tmp_path, val_size=10)


def test_fashion_mnist_label_count_mismatch(tmp_path: Path) -> None:
    _write_fake_fashion(tmp_path, gz=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(5, dtype=np.uint8))
    with pytest.raises(ValueError, match="labels"):
        load_fashion_mnist(tmp_path, val_size=10)


@pytest.mark.skipif(
    not (DEFAULT_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists()
    and not (DEFAULT_FASHION_MNIST_DIR / "train-images-idx3-ubyte").exists(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist_loads() -> None:
    d = load_fashion_mnist(limit=2000)
    assert d.train.x.shape == (2000, 1, 28, 28)
    assert d.val.x.shape == (5000, 1, 28, 28)
    assert d.test.x.shape == (10000, 1, 28, 28)
    assert torch.bincount(d.test.y, minlength=10).tolist() == [1000] * 10
    assert torch.bincount(d.val.y, minlength=10).tolist() == [500] * 10
    assert float(d.test.x.max()) == 1.0 and float(d.test.x.min()) == 0.0


# ---------------------------------------------------------------------------- digits


def test_digits_sizes_stratification_and_scaling() -> None:
    d = load_digits()
    assert isinstance(d, DataSplits) and d.task == "classification"
    assert (len(d.train), len(d.val), len(d.test)) == (1258, 180, 359)
    assert d.train.x.shape == (1258, 64) and d.input_shape == (64,) and d.input_dim == 64
    assert d.train.x.dtype == torch.float32 and d.train.y.dtype == torch.int64
    all_x = torch.cat([d.train.x, d.val.x, d.test.x])
    assert float(all_x.min()) == 0.0 and float(all_x.max()) == 1.0
    # Stratified: every split's class proportions match the full data within one row.
    y_all = torch.cat([d.train.y, d.val.y, d.test.y])
    full = torch.bincount(y_all, minlength=10).double() / len(y_all)
    for s in (d.train, d.val, d.test):
        counts = torch.bincount(s.y, minlength=10).double()
        assert torch.all((counts - full * len(s)).abs() <= 1.0)
    # The splits are disjoint and cover the data set: compare against sklearn's images.
    from sklearn.datasets import load_digits as sk

    ref = torch.as_tensor(sk().data / 16.0, dtype=torch.float32)
    assert len(all_x) == len(ref) == 1797
    # Same multiset of rows: sort both by a row hash-like projection, then compare.
    w = torch.arange(1.0, 65.0, dtype=torch.float64)
    key_all, key_ref = (all_x.double() @ w).sort().values, (ref.double() @ w).sort().values
    torch.testing.assert_close(key_all, key_ref)


def test_digits_reproducible_and_seed_dependent() -> None:
    a, b, c = load_digits(seed=5), load_digits(seed=5), load_digits(seed=6)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.train.x, c.train.x)


def test_digits_image_shape_and_dtype() -> None:
    d = load_digits(flatten=False, dtype=torch.float64)
    assert d.train.x.shape[1:] == (1, 8, 8) and d.input_shape == (1, 8, 8)
    assert d.train.x.dtype == torch.float64


def test_device_is_honoured() -> None:
    d = load_digits(device="meta")  # a real non-CPU device without needing a GPU
    assert d.device.type == "meta" and d.test.y.device.type == "meta"
    if torch.cuda.is_available():
        assert load_digits(device="cuda").train.x.is_cuda


# ----------------------------------------------------------------------------- table


def _write_csv(path: Path, x: np.ndarray, y: np.ndarray, names: list[str] | None) -> None:
    lines = [",".join(names)] if names else []
    lines += [",".join([*(f"{v:.10g}" for v in row), str(t)]) for row, t in zip(x, y, strict=True)]
    path.write_text("\n".join(lines) + "\n")


def test_table_regression_standardises_with_train_stats_only(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(5.0, 3.0, size=(200, 3))
    y = x @ np.array([1.0, -2.0, 0.5]) + 10.0 + rng.normal(size=200)
    p = tmp_path / "reg.csv"
    _write_csv(p, x, np.round(y, 8), ["a", "b", "c", "target"])
    d = load_table(p, target="target", val_fraction=0.2, test_fraction=0.2, seed=0)
    assert d.task == "regression" and d.num_classes is None
    assert d.feature_names == ("a", "b", "c") and d.input_shape == (3,)
    assert (len(d.train), len(d.val), len(d.test)) == (120, 40, 40)
    # Train split is exactly standardised; val/test are not (they use train stats).
    torch.testing.assert_close(d.train.x.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(d.train.x.std(0, unbiased=False), torch.ones(3), atol=1e-5, rtol=0)
    assert abs(float(d.train.y.mean())) < 1e-5
    # Recover the raw rows and check every split used the *train* statistics.
    tr, va, te = split_indices(200, 0.2, 0.2, seed=0)
    mu, sd = x[tr].mean(0), x[tr].std(0)
    for idx, s in ((tr, d.train), (va, d.val), (te, d.test)):
        np.testing.assert_allclose(s.x.numpy(), (x[idx] - mu) / sd, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(
            d.unstandardize_target(s.y).numpy(), np.round(y, 8)[idx], rtol=1e-5, atol=1e-4
        )
    assert d.target_mean == pytest.approx(np.round(y, 8)[tr].mean())
    assert not np.allclose(d.val.x.mean(0).numpy(), 0.0, atol=1e-6)


def test_table_whitespace_classification_with_string_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    labels = np.array(["setosa", "virginica", "versicolor"])[np.arange(60) % 3]
    x = rng.normal(size=(60, 2)) + (np.arange(60) % 3)[:, None]
    text = "# a comment line\n\n" + "\n".join(
        f"{a:.6f}   {b:.6f}\t{lab}" for (a, b), lab in zip(x, labels, strict=True)
    )
    p = tmp_path / "iris.txt"
    p.write_text(text + "\n")
    d = load_table(p, target=-1, val_fraction=0.1, test_fraction=0.2)
    assert d.task == "classification" and d.num_classes == 3
    assert d.class_names == ("setosa", "versicolor", "virginica")  # sorted mapping
    assert d.train.y.dtype == torch.int64 and d.feature_names is None
    assert (len(d.train), len(d.val), len(d.test)) == (42, 6, 12)
    assert torch.bincount(d.test.y).tolist() == [4, 4, 4]
    # Labels map consistently: recover the original label of each training row.
    tr, _, _ = split_indices(60, 0.1, 0.2, seed=0, stratify=np.searchsorted(d.class_names, labels))
    assert [d.class_names[i] for i in d.train.y.tolist()] == labels[tr].tolist()


def test_table_auto_task_integer_labels_and_header_detection(tmp_path: Path) -> None:
    x = np.tile(np.arange(10.0)[:, None], (3, 2))
    y = np.repeat([10, 2, 7], 10)
    p = tmp_path / "ints.csv"
    _write_csv(p, x, y, None)  # no header: first row is numeric
    d = load_table(p, target=2, test_fraction=0.3, val_fraction=0.0)
    assert d.task == "classification" and d.class_names == ("2", "7", "10")  # numeric order
    assert len(d.val) == 0 and d.val.x.shape == (0, 2)
    forced = load_table(p, target=2, task="regression", test_fraction=0.3, val_fraction=0.0)
    assert forced.task == "regression" and forced.train.y.dtype == torch.float32
    assert load_table(p, target=-1, header=False).train.x.shape[1] == 2


def test_table_device(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    _write_csv(p, np.arange(40.0).reshape(20, 2), np.arange(20) % 2, ["u", "v", "y"])
    d = load_table(p, target="y", device="meta")
    assert d.train.x.device.type == "meta" and d.feature_mean is not None
    assert d.feature_mean.device.type == "meta"


def test_table_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("\n# only a comment\n")
    with pytest.raises(ValueError, match="empty"):
        load_table(empty)

    good = tmp_path / "good.csv"
    _write_csv(good, np.arange(40.0).reshape(20, 2), np.arange(20) % 2, ["u", "v", "y"])
    with pytest.raises(ValueError, match=r"'nope' not found.*\['u', 'v', 'y'\]"):
        load_table(good, target="nope")
    with pytest.raises(ValueError, match="out of range"):
        load_table(good, target=3)

    bad = tmp_path / "bad.csv"
    bad.write_text("u,v,y\n1,2,0\n3,oops,1\n5,6,0\n")
    with pytest.raises(ValueError, match=r"'oops' at line 3, column 'v'"):
        load_table(bad, target="y")

    ragged = tmp_path / "ragged.csv"
    ragged.write_text("u,v,y\n1,2,0\n3,1\n")
    with pytest.raises(ValueError, match="line 3 has 2 fields"):
        load_table(ragged, target="y")

    rare = tmp_path / "rare.csv"
    _write_csv(rare, np.arange(22.0).reshape(11, 2), np.array([0] * 5 + [1] * 5 + [2]), None)
    with pytest.raises(ValueError, match=r"\['2'\] have fewer than 2 rows"):
        load_table(rare)

    with pytest.raises(FileNotFoundError):
        load_table(tmp_path / "missing.csv")


# ------------------------------------------------------------------ splits / batches


def test_split_indices_partition_and_minimum_per_class() -> None:
    labels = np.array([0] * 50 + [1] * 3 + [2] * 2)
    tr, va, te = split_indices(len(labels), 0.3, 0.3, seed=0, stratify=labels)
    assert sorted(np.concatenate([tr, va, te]).tolist()) == list(range(len(labels)))
    assert (len(va), len(te)) == (round(0.3 * 55), round(0.3 * 55))
    assert set(labels[tr].tolist()) == {0, 1, 2}  # every class keeps a training row
    with pytest.raises(ValueError, match="< 1"):
        split_indices(10, 0.5, 0.5)


def test_batches_cover_data_and_are_reproducible() -> None:
    x, y = torch.arange(23.0).unsqueeze(1), torch.arange(23)
    g1 = torch.Generator().manual_seed(0)
    loader = batches(x, y, 5, generator=g1)
    assert len(loader) == 5
    epoch1 = [yb.clone() for _, yb in loader]
    epoch2 = [yb.clone() for _, yb in loader]
    assert [len(b) for b in epoch1] == [5, 5, 5, 5, 3]
    assert sorted(torch.cat(epoch1).tolist()) == list(range(23))
    assert not torch.equal(torch.cat(epoch1), torch.cat(epoch2))  # reshuffles each epoch
    for xb, yb in batches(x, y, 5, generator=torch.Generator().manual_seed(1)):
        assert torch.equal(xb.squeeze(1), yb.float())  # rows stay paired
    g2 = torch.Generator().manual_seed(0)
    again = [yb for _, yb in batches(x, y, 5, generator=g2)]
    assert all(torch.equal(a, b) for a, b in zip(epoch1, again, strict=True))
    dropped = batches(x, y, 5, shuffle=False, drop_last=True)
    assert len(dropped) == 4 and sum(len(b) for _, b in dropped) == 20
    with pytest.raises(ValueError, match="same number of rows"):
        batches(x, y[:-1], 5)


def test_split_container_behaviour() -> None:
    s = Split(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))
    x, y = s
    assert len(s) == 4 and x.shape == (4, 2) and "(4, 2) float32" in repr(s)
    with pytest.raises(ValueError, match="same number of rows"):
        Split(torch.zeros(4, 2), torch.zeros(3))


def test_load_dataset_dispatch() -> None:
    assert load_dataset("digits", seed=2).name == "digits"
    with pytest.raises(ValueError, match="valid names: 'digits', 'fashion-mnist', 'table'"):
        load_dataset("cifar10")


# ------------------------------------------------------- table: hostile files and values


def test_table_file_errors_name_the_file_and_line(tmp_path: Path) -> None:
    cases = {
        "latin1.csv": ("u,v,y\n1,2,0\ncaf\u00e9,3,1\n".encode("latin-1"), r"line 3: byte 0xe9"),
        "binary.csv": (b"u,v,y\n1,2,0\n3,4,1\n\x89PNG\x00\x00", r"line 4: a NUL byte"),
        "dup.csv": ("# names\nu,v,u,y\n" + "1,2,3,0\n" * 4, r"line 2: duplicate column names 'u'"),
        "twice.csv": ("y,v,y\n" + "1,2,0\n" * 4, r"line 1: target 'y' names 2 columns"),
        "huge.csv": ("u,v,y\n1,2,0\n" + "7" * 140_000 + ",2,1\n", r"line 3: field larger"),
    }
    for name, (content, pattern) in cases.items():
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        with pytest.raises(ValueError, match=f"^{re.escape(str(path))}: {pattern}"):
            load_table(path, target="y")
    with pytest.raises(ValueError, match=f"^{re.escape(str(tmp_path))}: is a directory"):
        load_table(tmp_path)
    # UTF-8 with a byte-order mark and non-ASCII names is fine.
    bom = tmp_path / "bom.csv"
    bom.write_bytes("\ufeffh\u00f6he,v,y\n".encode() + b"".join(
        f"{i},{i % 3},{i % 2}\n".encode() for i in range(20)))
    assert load_table(bom, target="y").feature_names == ("h\u00f6he", "v")


def test_table_standardises_extreme_magnitudes_without_overflow(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    big, tiny, const = rng.uniform(-9, 9, 30) * 1e300, rng.uniform(1, 2, 30) * 1e-300, 5e300
    y = np.arange(30) % 2
    p = tmp_path / "extreme.csv"
    p.write_text("big,tiny,const,y\n" + "".join(
        f"{a:.17g},{b:.17g},{const:.17g},{t}\n" for a, b, t in zip(big, tiny, y, strict=True)))
    d = load_table(p, target="y", val_fraction=0.0, test_fraction=0.0)
    ref = [(v - v.mean()) / v.std() for v in (big / 1e300, tiny / 1e-300)]
    np.testing.assert_allclose(d.train.x[:, 0].numpy(), ref[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(d.train.x[:, 1].numpy(), ref[1], rtol=1e-5, atol=1e-5)
    assert torch.equal(d.train.x[:, 2], torch.zeros(30))  # constant: centred only
    assert d.feature_std is not None and d.feature_std[2] == 1.0
    # Unstandardised, float32 cannot hold them: an error naming the column, not inf or 0.
    with pytest.raises(ValueError, match=r"column 'big' has values that overflow torch.float32"):
        load_table(p, target="y", standardize=False)
    exact = load_table(p, target="y", standardize=False, dtype=torch.float64,
                       val_fraction=0.0, test_fraction=0.0)
    np.testing.assert_array_equal(exact.train.x[:, 1].numpy(), tiny)


def test_loaders_check_the_device() -> None:
    from pyrocg.data import check_device

    assert check_device("meta") == torch.device("meta")
    with pytest.raises(ValueError, match="device='tpu9' is not a device"):
        load_digits(device="tpu9")
    with pytest.raises(TypeError, match="device must be a str or torch.device"):
        check_device(None)  # type: ignore[arg-type]
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device='cuda', but CUDA is not available"):
            load_digits(device="cuda")
    else:
        n = torch.cuda.device_count()
        with pytest.raises(ValueError, match=f"this machine has {n} GPU"):
            check_device(f"cuda:{n}")
