"""Array data for the image experiments: an MNIST IDX reader, scikit-learn's 8×8 digits,
L2 normalisation and a PCA fitted in-project.

Nothing here downloads anything: MNIST is read from a directory the user gives (the standard IDX
files, gzip-compressed or raw), and the 8×8 digits ship inside scikit-learn.

The paper's MNIST pipeline (docs/SCIENCE.md §4) is::

    data = load_mnist(directory)                 # (n, 784) in [0, 1]
    x = l2_normalize(data.images)                # every image has unit Euclidean norm
    pca = fit_pca(x, 300)                        # principal axes of the normalised images
    z = pca.transform(x)                         # (n, 300): what the score model is trained on
    images = pca.inverse_transform(samples)      # back to pixels for the figure
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from ._validation import check_array, check_int, check_positive

__all__ = [
    "IDXFormatError",
    "ImageData",
    "PCA",
    "read_idx",
    "write_idx",
    "load_mnist",
    "load_digits",
    "l2_normalize",
    "fit_pca",
]

#: IDX type codes → NumPy big-endian dtypes.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


class IDXFormatError(ValueError):
    """A file is not a valid IDX file (wrong magic number, unknown type, truncated data)."""


class ImageData(NamedTuple):
    """A set of images as rows.

    - ``images``: ``(num, height·width)`` float32 pixel intensities in [0, 1].
    - ``labels``: ``(num,)`` int64 class labels, or ``None`` when no label file was found.
    - ``image_shape``: ``(height, width)``.
    - ``source``: where the data came from (file names), for the record.
    """

    images: np.ndarray
    labels: np.ndarray | None
    image_shape: tuple[int, int]
    source: str


def _open_maybe_gzip(path: Path):
    with open(path, "rb") as f:
        head = f.read(2)
    return gzip.open(path, "rb") if head == _GZIP_MAGIC else open(path, "rb")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (the MNIST format), gzip-compressed or raw.

    The header is two zero bytes, a type byte (0x08 unsigned byte, 0x09 signed byte, 0x0B int16,
    0x0C int32, 0x0D float32, 0x0E float64), a byte with the number of dimensions, then one
    big-endian uint32 per dimension; the data follow in big-endian C order. Compression is detected
    from the file's first bytes, not its name.

    **Arguments:**

    - `path`: the file.

    **Returns:** a NumPy array with the file's shape and (native-endian) dtype.

    **Raises:** `FileNotFoundError`; `IDXFormatError` for a bad magic number, an unknown type code,
    or a data section of the wrong length.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file {str(path)!r} does not exist")
    try:
        with _open_maybe_gzip(path) as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise IDXFormatError(f"cannot read {str(path)!r}: {err}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise IDXFormatError(
            f"{str(path)!r} is not an IDX file: its magic number must start with two zero bytes, "
            f"got {raw[:4].hex() or 'an empty file'}"
        )
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_DTYPES:
        raise IDXFormatError(
            f"{str(path)!r} has unknown IDX type code 0x{type_code:02x} "
            f"(expected one of {', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)})"
        )
    header_end = 4 + 4 * ndim
    if len(raw) < header_end:
        raise IDXFormatError(f"{str(path)!r} is truncated: its header needs {header_end} bytes")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header_end != expected:
        raise IDXFormatError(
            f"{str(path)!r} has {len(raw) - header_end} data bytes but its header (shape {shape}, "
            f"{dtype.name}) asks for {expected}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header_end).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array, *, compress: bool | None = None) -> Path:
    """Write an array as an IDX file (used by the tests to make tiny MNIST-like directories).

    **Arguments:**

    - `path`: the file to write.
    - `array`: array of dtype uint8, int8, int16, int32, float32 or float64.
    - `compress`: gzip the file (default: when `path` ends with ``.gz``).

    **Returns:** the path written.
    """
    path = Path(path)
    a = np.asarray(array)
    codes = {dt.newbyteorder("="): code for code, dt in _IDX_DTYPES.items()}
    native = a.dtype.newbyteorder("=")
    if native not in codes:
        raise TypeError(f"`array` has dtype {a.dtype}, which IDX cannot store")
    if a.ndim > 255:
        raise ValueError("`array` has too many dimensions for IDX")
    header = bytes([0, 0, codes[native], a.ndim]) + np.asarray(a.shape, dtype=">u4").tobytes()
    payload = header + a.astype(native.newbyteorder(">")).tobytes()
    if compress is None:
        compress = path.suffix == ".gz"
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


def _find(directory: Path, stems: list[str]) -> Path | None:
    for stem in stems:
        for suffix in (".gz", ""):
            candidate = directory / (stem + suffix)
            if candidate.is_file():
                return candidate
    return None


def _mnist_files(directory: Path, split: str) -> tuple[Path | None, Path | None]:
    prefix = "train" if split == "train" else "t10k"
    images = _find(directory, [f"{prefix}-images-idx3-ubyte", f"{prefix}-images.idx3-ubyte"])
    labels = _find(directory, [f"{prefix}-labels-idx1-ubyte", f"{prefix}-labels.idx1-ubyte"])
    return images, labels


def _pixels_to_unit(raw: np.ndarray, path: Path) -> np.ndarray:
    """Integer pixels 0–255 divided by 255; floating pixels already in [0, 1] kept. Anything else
    is refused (no rescaling by the data's own maximum, which would depend on the file)."""
    if raw.size == 0:
        return raw.astype(np.float32)
    lo, hi = float(raw.min()), float(raw.max())
    if np.issubdtype(raw.dtype, np.integer):
        if lo < 0 or hi > 255:
            raise IDXFormatError(f"{str(path)!r} holds integer pixels in [{lo:g}, {hi:g}]; expected 0–255")
        return raw.astype(np.float32) / np.float32(255.0)
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0 or hi > 1:
        raise IDXFormatError(f"{str(path)!r} holds floating pixels in [{lo:g}, {hi:g}]; expected values in "
                             "[0, 1] (or integer pixels 0–255)")
    return raw.astype(np.float32)


def load_mnist(directory: str | os.PathLike, *, split: str = "auto") -> ImageData:
    """Load MNIST (or any IDX image set laid out like it) from a directory.

    Looks for ``train-images-idx3-ubyte[.gz]`` / ``t10k-images-idx3-ubyte[.gz]`` (also the
    ``*-images.idx3-ubyte`` spelling) and the matching label files. Labels are optional.

    **Arguments:**

    - `directory`: the directory holding the IDX files.
    - `split`: ``"train"`` (60 000 images), ``"test"`` (the t10k files), or ``"auto"`` (train when
      present, else test).

    **Returns:** an `ImageData` with images in [0, 1]: integer pixels (0–255) are divided by 255,
    floating pixels must already lie in [0, 1].

    **Raises:** `FileNotFoundError` naming the files it looked for; `IDXFormatError` for corrupt
    files or images and labels of different lengths.
    """
    if split not in ("train", "test", "auto"):
        raise ValueError(f"`split` must be 'train', 'test' or 'auto', got {split!r}")
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"`directory` {str(directory)!r} is not a directory")
    order = ["train", "test"] if split == "auto" else [split]
    for s in order:
        images_path, labels_path = _mnist_files(directory, s)
        if images_path is not None:
            break
    else:
        prefixes = " or ".join(f"{'train' if s == 'train' else 't10k'}-images-idx3-ubyte[.gz]" for s in order)
        raise FileNotFoundError(f"no MNIST image file in {str(directory)!r}: looked for {prefixes}")
    raw = read_idx(images_path)
    if raw.ndim != 3:
        raise IDXFormatError(f"{str(images_path)!r} must hold a (num, height, width) array, got shape {raw.shape}")
    images = _pixels_to_unit(raw, images_path).reshape(raw.shape[0], -1)
    labels = None
    source = images_path.name
    if labels_path is not None:
        labels = read_idx(labels_path).astype(np.int64).reshape(-1)
        if labels.shape[0] != images.shape[0]:
            raise IDXFormatError(
                f"{labels_path.name} holds {labels.shape[0]} labels but {images_path.name} holds "
                f"{images.shape[0]} images"
            )
        source += f" + {labels_path.name}"
    return ImageData(images, labels, (int(raw.shape[1]), int(raw.shape[2])), f"{directory}/{{{source}}}")


def load_digits() -> ImageData:
    """scikit-learn's bundled 8×8 handwritten digits (1797 images, no download).

    **Returns:** an `ImageData` with images scaled to [0, 1] (the raw pixels are 0..16).
    """
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    images = np.asarray(bunch.data, dtype=np.float32) / np.float32(16.0)
    return ImageData(images, np.asarray(bunch.target, dtype=np.int64), (8, 8), "sklearn.datasets.load_digits")


def l2_normalize(x, *, eps: float = 1e-12) -> np.ndarray:
    """Scale every row to unit Euclidean norm (rows with norm below `eps` are left at zero).

    **Arguments:**

    - `x`: ``(num, features)``.
    - `eps`: the smallest norm divided by.

    **Returns:** a float32 NumPy array of the same shape.
    """
    a = np.asarray(check_array(x, "x", ndim=2), dtype=np.float32)
    eps = check_positive(eps, "eps")
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    return a / np.maximum(norms, np.float32(eps))


class PCA(NamedTuple):
    """A fitted principal component analysis.

    - ``mean``: ``(features,)`` the data mean.
    - ``components``: ``(num_components, features)`` orthonormal principal axes, largest variance
      first (sign fixed so each axis's largest-magnitude entry is positive).
    - ``explained_variance``: ``(num_components,)`` variance along each axis (ddof = 1).
    - ``total_variance``: the data's total variance (sum over all features, ddof = 1).
    - ``whiten``: whether `transform` divides each coordinate by its standard deviation
      √explained_variance (and `inverse_transform` multiplies it back).
    """

    mean: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray
    total_variance: float
    whiten: bool = False

    @property
    def num_components(self) -> int:
        return self.components.shape[0]

    @property
    def explained_variance_ratio(self) -> np.ndarray:
        """Fraction of the total variance each axis explains."""
        return self.explained_variance / self.total_variance

    def transform(self, x) -> np.ndarray:
        """Coordinates ``(x − mean) @ componentsᵀ`` (divided by √explained_variance when
        whitening), shape ``(num, num_components)``."""
        a = np.asarray(check_array(x, "x", ndim=2, dim=self.mean.shape[0]), dtype=np.float32)
        z = (a - self.mean) @ self.components.T
        return z / self._scale() if self.whiten else z

    def inverse_transform(self, z) -> np.ndarray:
        """Back to feature space: ``z @ components + mean``, shape ``(num, features)``."""
        a = np.asarray(check_array(z, "z", ndim=2, dim=self.num_components, finite=False), dtype=np.float32)
        if self.whiten:
            a = a * self._scale()
        return a @ self.components + self.mean

    def _scale(self) -> np.ndarray:
        return np.sqrt(np.maximum(self.explained_variance, 1e-30)).astype(np.float32)


def fit_pca(x, num_components: int, *, method: str = "jax", whiten: bool = False) -> PCA:
    """Fit a PCA by a thin SVD of the centred data.

    **Arguments:**

    - `x`: ``(num, features)`` data.
    - `num_components`: axes kept, at most ``min(num, features)``.
    - `method`: ``"jax"`` (``jnp.linalg.svd``, float32) or ``"sklearn"`` (``sklearn.decomposition.PCA``
      with the full LAPACK solver).
    - `whiten`: scale the coordinates to unit variance.

    **Returns:** a `PCA`.
    """
    a = np.asarray(check_array(x, "x", ndim=2, min_rows=2), dtype=np.float32)
    num_components = check_int(num_components, "num_components")
    if num_components > min(a.shape):
        raise ValueError(
            f"`num_components` ({num_components}) must be at most min(num, features) = {min(a.shape)}"
        )
    mean = a.mean(axis=0)
    centred = a - mean
    total = float(np.sum(np.var(centred.astype(np.float64), axis=0, ddof=1)))
    if method == "jax":
        _, s, vt = jnp.linalg.svd(jnp.asarray(centred), full_matrices=False)
        comps = np.asarray(vt[:num_components], dtype=np.float32)
        var = np.asarray(s[:num_components], dtype=np.float64) ** 2 / (a.shape[0] - 1)
    elif method == "sklearn":
        from sklearn.decomposition import PCA as _SkPCA

        sk = _SkPCA(n_components=num_components, svd_solver="full").fit(centred)
        comps = np.asarray(sk.components_, dtype=np.float32)
        var = np.asarray(sk.explained_variance_, dtype=np.float64)
    else:
        raise ValueError(f"`method` must be 'jax' or 'sklearn', got {method!r}")
    idx = np.argmax(np.abs(comps), axis=1)
    signs = np.sign(comps[np.arange(num_components), idx])
    comps = comps * np.where(signs == 0, 1.0, signs)[:, None].astype(np.float32)
    return PCA(mean.astype(np.float32), comps, var, total, bool(whiten))
