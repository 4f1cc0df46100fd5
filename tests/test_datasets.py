"""Tests of rsnjax.datasets: the IDX reader, MNIST directory loading, digits, L2 norm, PCA."""

import gzip
import json

import numpy as np
import pytest

from rsnjax import datasets


def _write_mnist_like(directory, num=12, *, prefix="t10k", compress=True, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(num, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=num, dtype=np.uint8)
    suffix = ".gz" if compress else ""
    datasets.write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images)
    datasets.write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return images, labels


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trip_gzip_and_raw(tmp_path, compress):
    images, labels = _write_mnist_like(tmp_path, compress=compress)
    suffix = ".gz" if compress else ""
    got_images = datasets.read_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}")
    got_labels = datasets.read_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}")
    assert got_images.dtype == np.uint8 and got_images.shape == (12, 28, 28)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


def test_read_idx_header_bytes_follow_the_format(tmp_path):
    # Build the file by hand (not with write_idx) so the reader is checked against the spec.
    data = np.arange(6, dtype=">i4").reshape(2, 3)
    raw = bytes([0, 0, 0x0C, 2]) + np.array([2, 3], dtype=">u4").tobytes() + data.tobytes()
    path = tmp_path / "hand.idx"
    path.write_bytes(raw)
    np.testing.assert_array_equal(datasets.read_idx(path), np.arange(6).reshape(2, 3))
    # gzip is detected from the content, not the name
    gz_path = tmp_path / "hand-no-suffix"
    gz_path.write_bytes(gzip.compress(raw))
    np.testing.assert_array_equal(datasets.read_idx(gz_path), np.arange(6).reshape(2, 3))


def test_read_idx_corrupt_magic_is_a_clear_error(tmp_path):
    path = tmp_path / "bad-images-idx3-ubyte"
    path.write_bytes(b"\x12\x34\x08\x03" + b"\x00" * 20)
    with pytest.raises(datasets.IDXFormatError, match="magic number"):
        datasets.read_idx(path)
    gz = tmp_path / "bad.gz"
    gz.write_bytes(gzip.compress(b"PK\x03\x04 not an idx file"))
    with pytest.raises(datasets.IDXFormatError, match="magic number"):
        datasets.read_idx(gz)


def test_read_idx_unknown_type_and_truncated_data(tmp_path):
    path = tmp_path / "type"
    path.write_bytes(bytes([0, 0, 0x42, 1]) + np.array([3], dtype=">u4").tobytes() + b"abc")
    with pytest.raises(datasets.IDXFormatError, match="type code 0x42"):
        datasets.read_idx(path)
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 0x08, 1]) + np.array([10], dtype=">u4").tobytes() + b"abc")
    with pytest.raises(datasets.IDXFormatError, match="3 data bytes"):
        datasets.read_idx(short)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        datasets.read_idx(tmp_path / "missing")


def test_load_mnist_directory(tmp_path):
    images, labels = _write_mnist_like(tmp_path, num=7)
    data = datasets.load_mnist(tmp_path)
    assert data.images.shape == (7, 784) and data.images.dtype == np.float32
    assert data.image_shape == (28, 28)
    np.testing.assert_allclose(data.images, images.reshape(7, -1) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(data.labels, labels)
    assert 0.0 <= data.images.min() and data.images.max() <= 1.0


def test_load_mnist_prefers_train_and_honours_split(tmp_path):
    _write_mnist_like(tmp_path, num=5, prefix="t10k", seed=1)
    _write_mnist_like(tmp_path, num=9, prefix="train", compress=False, seed=2)
    assert datasets.load_mnist(tmp_path).images.shape[0] == 9
    assert datasets.load_mnist(tmp_path, split="test").images.shape[0] == 5
    with pytest.raises(ValueError, match="`split`"):
        datasets.load_mnist(tmp_path, split="validation")


def test_load_mnist_pixel_scale_does_not_depend_on_the_data(tmp_path):
    # integer pixels are /255 whatever their maximum; float pixels in [0, 1] are kept as they are;
    # anything else is refused (the scale used to be max|x| of the file)
    dark = np.zeros((3, 4, 4), np.int16)
    dark[:, 0, 0] = 100
    datasets.write_idx(tmp_path / "t10k-images-idx3-ubyte", dark)
    np.testing.assert_allclose(datasets.load_mnist(tmp_path).images[:, 0], 100 / 255, rtol=1e-6)
    half = np.full((3, 4, 4), 0.5, np.float32)
    datasets.write_idx(tmp_path / "t10k-images-idx3-ubyte", half)
    np.testing.assert_array_equal(datasets.load_mnist(tmp_path).images, 0.5)
    for bad, match in [(np.full((3, 4, 4), 200.0, np.float32), r"floating pixels in \[200, 200\]"),
                       (np.full((3, 4, 4), -1, np.int16), r"integer pixels in \[-1, -1\]"),
                       (np.full((3, 4, 4), 300, np.int16), "expected 0–255")]:
        datasets.write_idx(tmp_path / "t10k-images-idx3-ubyte", bad)
        with pytest.raises(datasets.IDXFormatError, match=match):
            datasets.load_mnist(tmp_path)


def test_load_mnist_errors_name_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        datasets.load_mnist(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        datasets.load_mnist(tmp_path / "nope")
    rng = np.random.default_rng(0)
    datasets.write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 255, (4, 28, 28), dtype=np.uint8))
    datasets.write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(3, np.uint8))
    with pytest.raises(datasets.IDXFormatError, match="3 labels"):
        datasets.load_mnist(tmp_path)


def test_load_digits_is_bundled():
    data = datasets.load_digits()
    assert data.images.shape == (1797, 64) and data.image_shape == (8, 8)
    assert data.labels.shape == (1797,) and set(np.unique(data.labels)) == set(range(10))
    assert data.images.min() == 0.0 and data.images.max() == 1.0


def test_l2_normalize():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1e-3, 0.0]])
    y = datasets.l2_normalize(x)
    np.testing.assert_allclose(y[0], [0.6, 0.8], rtol=1e-6)
    np.testing.assert_array_equal(y[1], [0.0, 0.0])  # a zero row stays zero, no NaN
    np.testing.assert_allclose(np.linalg.norm(y[[0, 2]], axis=1), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="`x`"):
        datasets.l2_normalize(np.ones(3))


@pytest.mark.parametrize("method", ["jax", "sklearn"])
def test_pca_round_trip_and_variance(method):
    rng = np.random.default_rng(0)
    # data that lie exactly in a 3-D affine subspace of R^10
    basis = np.linalg.qr(rng.normal(size=(10, 3)))[0].T  # (3, 10) orthonormal rows
    scales = np.array([3.0, 1.0, 0.3])
    coords = rng.normal(size=(500, 3)) * scales
    x = coords @ basis + rng.normal(size=10)
    pca = datasets.fit_pca(x, 3, method=method)
    z = pca.transform(x)
    np.testing.assert_allclose(pca.inverse_transform(z), x, atol=1e-4)
    np.testing.assert_allclose(pca.components @ pca.components.T, np.eye(3), atol=1e-5)
    np.testing.assert_allclose(pca.explained_variance, np.var(coords, axis=0, ddof=1)[np.argsort(-scales)], rtol=0.02)
    np.testing.assert_allclose(pca.explained_variance_ratio.sum(), 1.0, atol=1e-5)
    assert np.all(np.diff(pca.explained_variance) <= 0)


def test_pca_methods_agree_and_truncation_loses_only_small_variance():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 20)) * np.linspace(2.0, 0.1, 20)
    a = datasets.fit_pca(x, 5, method="jax")
    b = datasets.fit_pca(x, 5, method="sklearn")
    np.testing.assert_allclose(a.components, b.components, atol=2e-3)  # same sign convention
    np.testing.assert_allclose(a.explained_variance, b.explained_variance, rtol=1e-3)
    residual = x - a.inverse_transform(a.transform(x))
    lost = np.sum(np.var(residual, axis=0, ddof=1))
    np.testing.assert_allclose(lost, a.total_variance - a.explained_variance.sum(), rtol=1e-3)


def test_pca_argument_errors():
    x = np.ones((4, 3)) + np.arange(12).reshape(4, 3) ** 2
    with pytest.raises(ValueError, match="`num_components`"):
        datasets.fit_pca(x, 5)
    with pytest.raises(ValueError, match="`method`"):
        datasets.fit_pca(x, 2, method="torch")
    pca = datasets.fit_pca(x, 2)
    with pytest.raises(ValueError, match="`x`"):
        pca.transform(np.ones((2, 4)))
    with pytest.raises(ValueError, match="`z`"):
        pca.inverse_transform(np.ones((2, 3)))


def test_pca_whitening_gives_unit_variance_and_inverts():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(400, 6)) * np.array([5.0, 2.0, 1.0, 0.5, 0.2, 0.1]) + 3.0
    pca = datasets.fit_pca(x, 6, whiten=True)
    z = pca.transform(x)
    np.testing.assert_allclose(np.var(z, axis=0, ddof=1), 1.0, rtol=1e-3)
    np.testing.assert_allclose(pca.inverse_transform(z), x, atol=1e-3)


def test_mnist_experiment_runs_on_an_idx_directory(tmp_path, monkeypatch):
    """The MNIST experiment's "tiny" preset end to end on IDX files written here."""
    import rsnjax.experiments as ex

    monkeypatch.setenv("RSNJAX_COMPILATION_CACHE", "0")  # leave the process-wide JAX config alone
    data_dir = tmp_path / "idx"
    data_dir.mkdir()
    rng = np.random.default_rng(0)
    # 120 blurry "digits": a bright blob at a random place, so PCA has structure to find
    yy, xx = np.mgrid[0:28, 0:28]
    centres = rng.uniform(8, 20, size=(120, 2))
    blobs = np.exp(-((yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2) / 18.0)
    datasets.write_idx(data_dir / "t10k-images-idx3-ubyte.gz", (255 * blobs).astype(np.uint8))
    datasets.write_idx(data_dir / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, 120).astype(np.uint8))
    out = tmp_path / "mnist"
    result = ex.run("mnist", preset="tiny", out_dir=out, data_dir=data_dir)
    for name in ("config.json", "metrics.json", "table.md", "samples.png", "samples_rsn.png", "loss.png"):
        assert (out / name).is_file(), name
    numbers = json.loads((out / "metrics.json").read_text())
    assert set(numbers["models"]) == {"SO-SC", "SO-FR", "RSN"}
    assert all(f"| {f} |" in result["table"] for f in numbers["models"])
    assert numbers["pca_dim"] == ex.PRESETS["mnist"]["tiny"]["pca_dim"]
    assert numbers["num_train"] + numbers["num_heldout"] == 120
    assert "t10k-images-idx3-ubyte.gz" in numbers["data_source"]
