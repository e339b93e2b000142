"""Data sources on the shipped samples (always) and on ../shared/data (when present)."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest

from latentwire.codec.errors import InputError
from latentwire.codec.normalization import Normalization
from latentwire.codec.sources import (
    ImageFolder,
    SampleSet,
    checksum16,
    decode_212,
    default_data_root,
    detect_kind,
    encode_212,
    load_array,
    load_ecg_windows,
    load_idx,
    load_mnist,
    load_record,
    load_source,
    parse_header,
    read_idx,
    sample_data_root,
    save_array,
    verify_record,
    write_idx,
)

DATA = sample_data_root()
MNIST = DATA / "mnist"
MITDB = DATA / "mitdb"
BSDS = DATA / "bsds"
# First ten labels of the canonical MNIST train and t10k sets.
TRAIN_LABELS_10 = [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
TEST_LABELS_10 = [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


def shared(sub: str) -> Path:
    root = default_data_root()
    if root is None or not (root / sub).is_dir():
        pytest.skip(f"full data set {sub} not available (../shared/data or $LATENTWIRE_DATA)")
    return root / sub


# ---- IDX / MNIST ----------------------------------------------------------------------------


@pytest.mark.parametrize("split,n,first", [("train", 1000, TRAIN_LABELS_10), ("test", 500, TEST_LABELS_10)])
def test_mnist_sample_shapes_dtypes_labels(split: str, n: int, first: list[int]) -> None:
    ss = load_mnist(MNIST, split=split)
    assert ss.samples.shape == (n, 1, 28, 28) and ss.samples.dtype == np.uint8
    assert ss.sample_shape == (1, 28, 28) and len(ss) == n
    assert ss.labels is not None and ss.labels.shape == (n,)
    assert ss.labels[:10].tolist() == first
    assert set(np.unique(ss.labels).tolist()) == set(range(10))
    assert ss.normalization == Normalization(0.0, 255.0, "uint8", 0.0, 255.0)
    assert ss.samples.max() == 255 and ss.samples.min() == 0
    m = ss.model_domain()
    assert m.dtype == np.float32 and 0.0 <= m.min() and m.max() == 1.0
    assert len(load_mnist(MNIST, split=split, limit=7)) == 7


def test_mnist_sample_matches_full_set() -> None:
    full = load_mnist(shared("mnist"), split="test", limit=500)
    ss = load_mnist(MNIST, split="test")
    assert np.array_equal(full.samples, ss.samples) and np.array_equal(full.labels, ss.labels)


def test_idx_truncated_gives_input_error(tmp_path: Path) -> None:
    raw = gzip.decompress((MNIST / "t10k-images-idx3-ubyte.gz").read_bytes())
    cut = tmp_path / "cut-idx3-ubyte"
    cut.write_bytes(raw[: len(raw) - 100])
    with pytest.raises(InputError, match="truncated"):
        read_idx(cut)
    # A gzip stream cut in the middle: also an InputError, not an EOFError.
    gz = (MNIST / "t10k-images-idx3-ubyte.gz").read_bytes()
    cutgz = tmp_path / "cut-idx3-ubyte.gz"
    cutgz.write_bytes(gz[: len(gz) // 2])
    with pytest.raises(InputError, match="truncated|damaged"):
        read_idx(cutgz)


def test_idx_bad_magic_and_dtype(tmp_path: Path) -> None:
    bad = tmp_path / "bad.idx"
    bad.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 20)
    with pytest.raises(InputError, match="bad magic"):
        read_idx(bad)
    bad.write_bytes(b"\x00\x00\x42\x01\x00\x00\x00\x01\x00")
    with pytest.raises(InputError, match="dtype code 0x42"):
        read_idx(bad)
    extra = tmp_path / "extra.idx"
    write_idx(extra, np.arange(6, dtype=np.uint8))
    extra.write_bytes(extra.read_bytes() + b"\x00")
    with pytest.raises(InputError, match="bytes after"):
        read_idx(extra)


def test_idx_write_read_roundtrip(tmp_path: Path) -> None:
    for arr in (np.arange(24, dtype=np.uint8).reshape(2, 3, 4), np.arange(-5, 5, dtype=np.int16),
                np.linspace(0, 1, 6, dtype=np.float32).reshape(3, 2)):
        write_idx(tmp_path / "a.idx.gz", arr)
        back = read_idx(tmp_path / "a.idx.gz")
        assert back.dtype == arr.dtype and np.array_equal(back, arr)
    write_idx(tmp_path / "l-idx1-ubyte", np.zeros(3, dtype=np.uint8))
    with pytest.raises(InputError, match="3 labels for 500 images"):
        load_idx(MNIST / "t10k-images-idx3-ubyte.gz", tmp_path / "l-idx1-ubyte")


# ---- arrays ---------------------------------------------------------------------------------


def test_npy_npz_roundtrip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(10, 1, 5, 5), dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    ss = load_array(tmp_path / "x.npy")
    assert np.array_equal(ss.samples, x) and ss.normalization.scale == 255.0

    ecg = rng.integers(300, 1800, size=(6, 2, 64), dtype=np.int16)
    labels = np.arange(6)
    groups = np.array([1, 1, 2, 2, 3, 3])
    np.savez(tmp_path / "e.npz", signals=ecg, labels=labels, groups=groups)
    with pytest.raises(InputError, match="key="):
        load_array(tmp_path / "e.npz")  # 'signals' is not a default name and there are 3 arrays
    e = load_array(tmp_path / "e.npz", key="signals")
    assert np.array_equal(e.samples, ecg) and e.samples.dtype == np.int16
    assert np.array_equal(e.labels, labels) and np.array_equal(e.groups, groups)
    # other integers: range from the data, model domain in [0, 1]
    assert e.normalization.raw_min == ecg.min() and e.normalization.raw_max == ecg.max()
    m = e.model_domain()
    assert m.min() == 0.0 and m.max() == 1.0
    with pytest.raises(InputError, match="no array named 'nope'"):
        load_array(tmp_path / "e.npz", key="nope")

    save_array(tmp_path / "s.npz", e)
    back = load_source(tmp_path / "s.npz")
    assert np.array_equal(back.samples, ecg) and np.array_equal(back.groups, groups)

    f = rng.normal(size=(4, 3)).astype(np.float32)
    np.save(tmp_path / "f.npy", f)
    fs = load_array(tmp_path / "f.npy")
    assert fs.normalization.offset == 0.0 and fs.normalization.scale == 1.0
    assert np.array_equal(fs.model_domain(), f)
    f[0, 0] = np.nan
    np.save(tmp_path / "f.npy", f)
    with pytest.raises(InputError, match="NaN"):
        load_array(tmp_path / "f.npy")
    explicit = Normalization(0.0, 10.0, "float32", -5.0, 5.0)
    np.save(tmp_path / "g.npy", np.ones((2, 2), np.float32))
    assert load_array(tmp_path / "g.npy", normalization=explicit).normalization is explicit


def test_packaged_mnist_asset() -> None:
    from importlib.resources import files

    path = files("latentwire.codec.assets") / "mnist_test_sample.npz"
    ss = load_array(Path(str(path)))
    assert ss.samples.shape == (1000, 1, 28, 28) and ss.samples.dtype == np.uint8
    assert ss.labels is not None and ss.labels[:10].tolist() == TEST_LABELS_10
    assert np.array_equal(ss.samples[:500], load_mnist(MNIST, "test").samples)


# ---- images ---------------------------------------------------------------------------------


def test_image_folder_crops_and_images() -> None:
    folder = ImageFolder(BSDS)
    assert [p.name for p in folder.paths] == sorted(p.name for p in BSDS.glob("*.png"))
    imgs = folder.images()
    assert len(imgs) == 3 and all(i.dtype == np.uint8 and i.shape[0] == 3 for i in imgs)
    assert sorted(i.shape[1:] for i in imgs) == [(64, 96), (64, 96), (96, 64)]

    a = folder.crops(size=(32, 48), per_image=4, seed=1)
    b = folder.crops(size=(32, 48), per_image=4, seed=1)
    c = folder.crops(size=(32, 48), per_image=4, seed=2)
    assert a.samples.shape == (12, 3, 32, 48) and a.samples.dtype == np.uint8
    assert np.array_equal(a.samples, b.samples)
    assert not np.array_equal(a.samples, c.samples)
    assert a.groups.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    # every crop is a real window of its image
    crop, img = a.samples[5], imgs[1]
    found = any(
        np.array_equal(img[:, t : t + 32, x : x + 48], crop)
        for t in range(img.shape[1] - 31)
        for x in range(img.shape[2] - 47)
    )
    assert found
    grey = ImageFolder(BSDS, mode="L").crops(size=(16, 16), per_image=2, seed=0)
    assert grey.samples.shape == (6, 1, 16, 16)
    with pytest.raises(InputError, match="smaller than"):
        folder.crops(size=(80, 80))


# ---- WFDB -----------------------------------------------------------------------------------


@pytest.mark.parametrize("record,n", [("100", 43200), ("101", 43200), ("102", 10800), ("103", 10800)])
def test_wfdb_shipped_records_verify(record: str, n: int) -> None:
    signals, header = load_record(MITDB / record)  # raises on an initial value / checksum mismatch
    assert signals.shape == (2, n) and signals.dtype == np.int16
    assert header.n_samples == n and header.fs == 360.0 and header.n_sig == 2
    for i, spec in enumerate(header.signals):
        assert spec.fmt == 212 and spec.gain == 200.0 and spec.adc_zero == 1024 and spec.adc_res == 11
        assert int(signals[i, 0]) == spec.init_value
        assert checksum16(signals[i]) == spec.checksum
    assert verify_record(signals, header) == []
    assert 0 <= signals.min() and signals.max() <= 2047


def test_wfdb_header_fields() -> None:
    h = parse_header(MITDB / "100.hea")
    assert (h.record, h.n_sig, h.fs, h.n_samples) == ("100", 2, 360.0, 43200)
    assert [s.description for s in h.signals] == ["MLII", "V5"]
    assert h.signals[0].init_value == 995 and h.signals[1].init_value == 1011
    assert any("Aldomet" in c for c in h.comments)


def test_wfdb_full_record_100() -> None:
    folder = shared("mitdb")
    signals, header = load_record(folder / "100.hea")
    assert signals.shape == (2, 650000)
    assert [s.checksum for s in header.signals] == [-22131, 20052]
    assert [checksum16(s) for s in signals] == [-22131, 20052]
    assert signals[:, :5].tolist() == [[995, 995, 995, 995, 995], [1011, 1011, 1011, 1011, 1011]]
    short, _ = load_record(MITDB / "100")
    assert np.array_equal(signals[:, : short.shape[1]], short)


def test_wfdb_corruption_detected(tmp_path: Path) -> None:
    for ext in ("hea", "dat"):
        shutil.copy(MITDB / f"101.{ext}", tmp_path / f"101.{ext}")
    dat = bytearray((tmp_path / "101.dat").read_bytes())
    dat[3000] ^= 0x01
    (tmp_path / "101.dat").write_bytes(bytes(dat))
    with pytest.raises(InputError, match="checksum"):
        load_record(tmp_path / "101")
    (tmp_path / "101.dat").write_bytes(bytes(dat[:-300]))
    with pytest.raises(InputError, match="truncated"):
        load_record(tmp_path / "101")


def test_format_212_roundtrip_and_sign() -> None:
    vals = np.array([-2048, -1, 0, 1, 2047, 1024, -7], dtype=np.int16)  # odd count: last triple cut
    packed = encode_212(vals)
    assert len(packed) == 11
    assert np.array_equal(decode_212(packed, vals.size), vals)
    # hand-packed: 0x123 and 0xABC (negative in 12-bit two's complement)
    assert decode_212(bytes([0x23, 0xA1, 0xBC]), 2).tolist() == [0x123, 0xABC - 4096]


def test_ecg_windows_and_split_by_record() -> None:
    ss = load_ecg_windows(MITDB, window=1024)
    per = {"100": 42, "101": 42, "102": 10, "103": 10}  # floor(n / 1024)
    assert ss.samples.shape == (sum(per.values()), 2, 1024) and ss.samples.dtype == np.int16
    assert {int(k): v for k, v in per.items()} == dict(zip(*np.unique(ss.groups, return_counts=True), strict=True))
    assert ss.normalization == Normalization(1024.0, 200.0, "int16", 0.0, 2047.0)
    sig, _ = load_record(MITDB / "101")
    first101 = np.flatnonzero(ss.groups == 101)[0]
    assert np.array_equal(ss.samples[first101], sig[:, :1024])

    for seed in range(5):
        train, val = ss.split(val_fraction=0.25, seed=seed)
        assert len(train) + len(val) == len(ss) and len(val) > 0 and len(train) > 0
        assert set(train.groups.tolist()).isdisjoint(val.groups.tolist())
    assert np.array_equal(ss.split(0.25, seed=3)[1].samples, ss.split(0.25, seed=3)[1].samples)

    sub = load_ecg_windows(MITDB, records=[100, "102"], window=512, stride=256, limit_per_record=5)
    assert sub.samples.shape == (10, 2, 512) and sorted(set(sub.groups.tolist())) == [100, 102]
    assert np.array_equal(sub.samples[1, :, :256], sub.samples[0, :, 256:])
    with pytest.raises(InputError, match="single group"):
        load_ecg_windows(MITDB, records=[100]).split(0.2)
    with pytest.raises(InputError, match="not found"):
        load_ecg_windows(MITDB, records=[999])


def test_random_split_without_groups() -> None:
    ss = load_mnist(MNIST, "test")
    train, val = ss.split(0.2, seed=0)
    assert (len(train), len(val)) == (400, 100)
    both = np.concatenate([train.labels, val.labels])
    assert sorted(both.tolist()) == sorted(ss.labels.tolist())
    t2, v2 = ss.split(0.2, seed=1)
    assert not np.array_equal(val.samples, v2.samples)


# ---- normalization round trip -----------------------------------------------------------------


def test_normalization_roundtrips_raw_exactly() -> None:
    mnist = load_mnist(MNIST, "train")
    assert np.array_equal(mnist.normalization.to_raw(mnist.model_domain()), mnist.samples)
    all_bytes = np.arange(256, dtype=np.uint8)
    assert np.array_equal(mnist.normalization.to_raw(mnist.normalization.to_model(all_bytes)), all_bytes)
    ecg = load_ecg_windows(MITDB)
    back = ecg.normalization.to_raw(ecg.model_domain())
    assert back.dtype == np.int16 and np.array_equal(back, ecg.samples)
    all_adc = np.arange(0, 2048, dtype=np.int16)
    assert np.array_equal(ecg.normalization.to_raw(ecg.normalization.to_model(all_adc)), all_adc)


# ---- load_source ------------------------------------------------------------------------------


def test_load_source_detection(tmp_path: Path) -> None:
    assert detect_kind(MNIST) == "mnist"
    assert detect_kind(MITDB) == "ecg"
    assert detect_kind(BSDS) == "images"
    assert detect_kind(MNIST / "t10k-images-idx3-ubyte.gz") == "idx"
    assert len(load_source(MNIST, split="test")) == 500
    assert len(load_source(MNIST)) == 1000
    assert load_source(MNIST / "t10k-images-idx3-ubyte.gz", limit=3).samples.shape == (3, 1, 28, 28)
    assert load_source(BSDS, size=(24, 24), per_image=2, seed=0).samples.shape == (6, 3, 24, 24)
    assert load_source(MITDB, window=256, records=["100"]).samples.shape == (168, 2, 256)
    # records as CLIs pass them (`--source-option records=100,101` arrives as text, `records=100` as an int)
    both = load_source(MITDB, window=256, records=["100", "101"])
    assert np.array_equal(load_source(MITDB, window=256, records="100,101").samples, both.samples)
    assert load_source(MITDB, window=256, records=100).samples.shape == (168, 2, 256)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="known kinds: mnist, idx, arrays, images, ecg"):
        load_source(tmp_path)
    with pytest.raises(InputError, match="known kinds"):
        load_source(MNIST, kind="parquet")
    with pytest.raises(InputError, match="do not apply"):
        load_source(MNIST, window=3)
    with pytest.raises(InputError, match="not found"):
        load_source(tmp_path / "missing.npy")


def test_sampleset_validation_and_subset() -> None:
    ss = load_mnist(MNIST, "test", limit=10)
    sub = ss.subset([3, 1])
    assert np.array_equal(sub.samples, ss.samples[[3, 1]]) and sub.labels.tolist() == [0, 2]
    assert len(ss.subset(ss.labels == 1)) == int((ss.labels == 1).sum())
    with pytest.raises(InputError, match="one entry per sample"):
        SampleSet(samples=ss.samples, normalization=ss.normalization, labels=np.zeros(3))
