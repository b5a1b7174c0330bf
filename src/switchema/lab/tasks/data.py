"""The built-in tasks' data sets, all made offline.

The data are either generated in code (scikit-learn, MNIST-1D), shipped inside an installed
package (scikit-learn's ``digits``), read from the Python standard library's own source files
(``charlm``), or read from a local folder the user points at (CIFAR). Each builder takes the
data seed and keyword options and returns a :class:`~switchema.lab.tasks.base.TaskData`.
"""

from __future__ import annotations

import functools
import pickle
import random
import sysconfig
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import numpy as np
import torch

from ..._checks import check_int, check_real
from .base import FRACTION, Range, TaskData, keyword_options
from .cache import cached_data

__all__ = [
    "CHARLM_SOURCES",
    "MNIST1D_CANONICAL",
    "MNIST1D_CANONICAL_SEED",
    "charlm_data",
    "cifar_data",
    "cifar_check",
    "circles_data",
    "digits_data",
    "friedman_data",
    "load_cifar",
    "mnist1d_data",
]


#: what generates the scikit-learn data sets: cached data are keyed by their versions
_SKLEARN = ("scikit-learn", "numpy", "scipy")


def _check_fraction(value: object, name: str) -> float:
    return check_real(value, name, minimum=0.0, maximum=1.0, min_open=True, max_open=True)


def _check_seed(seed: object) -> int:
    return check_int(seed, "seed", minimum=0)


@keyword_options
@cached_data(version=1, packages=_SKLEARN)
def circles_data(
    seed: int,
    *,
    n_train: Annotated[int, Range(2)] = 50,
    n_test: Annotated[int, Range(2)] = 500,
    noise: Annotated[float, Range(0.0)] = 0.1,
    factor: Annotated[float, FRACTION] = 0.5,
) -> TaskData:
    """Two concentric noisy circles (sklearn ``make_circles``), stratified split by seed."""
    from sklearn.datasets import make_circles
    from sklearn.model_selection import train_test_split

    seed = _check_seed(seed)
    n_train = check_int(n_train, "n_train", minimum=2)
    n_test = check_int(n_test, "n_test", minimum=2)
    noise = float(noise)
    if not noise >= 0.0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    factor = _check_fraction(factor, "factor")
    x, y = make_circles(n_samples=n_train + n_test, noise=noise, factor=factor, random_state=seed)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, train_size=n_train, test_size=n_test, stratify=y, random_state=seed
    )
    lo, hi = x.min(axis=0), x.max(axis=0)
    margin = 0.1 * (hi - lo)
    return TaskData(
        x_train=torch.as_tensor(x_tr, dtype=torch.float32),
        y_train=torch.as_tensor(y_tr, dtype=torch.int64),
        x_test=torch.as_tensor(x_te, dtype=torch.float32),
        y_test=torch.as_tensor(y_te, dtype=torch.int64),
        kind="classification",
        num_classes=2,
        meta={
            "input_dim": 2,
            "is_2d": True,  # the lab can draw decision boundaries
            "bounds": [
                [float(lo[0] - margin[0]), float(hi[0] + margin[0])],
                [float(lo[1] - margin[1]), float(hi[1] + margin[1])],
            ],
            "n_train": n_train,
            "n_test": n_test,
            "noise": noise,
            "factor": factor,
        },
    )


# MNIST-1D
# ---------------------------------------------------------------------------


#: The seed of the mnist1d package's default arguments (``get_dataset_args().seed``): with the
#: default options it generates the canonical MNIST-1D, the data set the published baselines
#: refer to. A test checks it against the installed package.
MNIST1D_CANONICAL_SEED = 42
#: How a task's header names that data set (``canonical_data=`` of :func:`register_task`).
MNIST1D_CANONICAL = "the canonical MNIST-1D, the mnist1d package's default data set"


@keyword_options
@cached_data(version=1, packages=("mnist1d", "numpy", "scipy"))
def mnist1d_data(
    seed: int,
    *,
    n_total: Annotated[int, Range(20)] = 5000,
    train_split: Annotated[float, FRACTION] = 0.8,
) -> TaskData:
    """MNIST-1D generated offline with the package's default arguments.

    ``n_total`` examples (rounded down to a multiple of 10 by the generator)
    are split ``train_split`` / rest; the default reproduces the published
    4000 / 1000 layout. The seed drives the whole generation, so different
    seeds give different examples as well as a different split. Generated once per setting
    and then read from the data cache (:mod:`switchema.lab.tasks.cache`).
    """
    from mnist1d.data import get_dataset_args, make_dataset

    seed = _check_seed(seed)
    n_total = check_int(n_total, "n_total", minimum=20)
    train_split = _check_fraction(train_split, "train_split")
    args = get_dataset_args()
    args.num_samples = n_total
    args.train_split = train_split
    args.seed = seed
    # make_dataset reseeds the global numpy and random RNGs; put them back so that
    # building data has no side effect on the caller's randomness.
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    try:
        d = make_dataset(args)
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)
    if len(d["y"]) == 0 or len(d["y_test"]) == 0:
        raise ValueError(f"n_total={n_total} with train_split={train_split} leaves an empty split")
    return TaskData(
        x_train=torch.as_tensor(d["x"], dtype=torch.float32),
        y_train=torch.as_tensor(d["y"], dtype=torch.int64),
        x_test=torch.as_tensor(d["x_test"], dtype=torch.float32),
        y_test=torch.as_tensor(d["y_test"], dtype=torch.int64),
        kind="classification",
        num_classes=10,
        meta={"n_total": n_total, "train_split": train_split, "seq_len": 40},
    )


# digits
# ---------------------------------------------------------------------------


@keyword_options
@cached_data(version=1, packages=_SKLEARN)
def digits_data(seed: int, *, n_test: Annotated[int, Range(10)] = 450) -> TaskData:
    """scikit-learn's 8x8 digits (1797 images), stratified split by seed.

    Pixels (0..16) are standardised with the training set's global mean and
    standard deviation; inputs have shape ``(n, 1, 8, 8)``.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    seed = _check_seed(seed)
    n_test = check_int(n_test, "n_test", minimum=10)
    digits = load_digits()
    x = digits.data.astype(np.float32)
    y = digits.target.astype(np.int64)
    if n_test > len(y) - 10:
        raise ValueError(f"n_test must be at most {len(y) - 10}, got {n_test}")
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=n_test, stratify=y, random_state=seed)
    mean, std = float(x_tr.mean()), float(x_tr.std())
    x_tr = (x_tr - mean) / std
    x_te = (x_te - mean) / std
    return TaskData(
        x_train=torch.as_tensor(x_tr).reshape(-1, 1, 8, 8),
        y_train=torch.as_tensor(y_tr),
        x_test=torch.as_tensor(x_te).reshape(-1, 1, 8, 8),
        y_test=torch.as_tensor(y_te),
        kind="classification",
        num_classes=10,
        meta={"n_test": n_test, "pixel_mean": mean, "pixel_std": std},
    )


# Friedman #1 regression
# ---------------------------------------------------------------------------


@keyword_options
@cached_data(version=1, packages=_SKLEARN)
def friedman_data(
    seed: int,
    *,
    n_train: Annotated[int, Range(2)] = 2000,
    n_test: Annotated[int, Range(1)] = 1000,
    noise: Annotated[float, Range(0.0)] = 1.0,
) -> TaskData:
    """sklearn ``make_friedman1`` (10 features, 5 informative), standardised.

    Inputs and targets are standardised with training statistics; ``meta``
    keeps ``y_mean`` and ``y_std`` so errors can be reported in original units.
    """
    from sklearn.datasets import make_friedman1

    seed = _check_seed(seed)
    n_train = check_int(n_train, "n_train", minimum=2)
    n_test = check_int(n_test, "n_test", minimum=1)
    noise = float(noise)
    if not noise >= 0.0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    x, y = make_friedman1(n_samples=n_train + n_test, n_features=10, noise=noise, random_state=seed)
    # The samples are i.i.d., so a contiguous cut is a random split.
    x_tr, x_te, y_tr, y_te = x[:n_train], x[n_train:], y[:n_train], y[n_train:]
    x_mean, x_std = x_tr.mean(axis=0), x_tr.std(axis=0)
    y_mean, y_std = float(y_tr.mean()), float(y_tr.std())
    return TaskData(
        x_train=torch.as_tensor((x_tr - x_mean) / x_std, dtype=torch.float32),
        y_train=torch.as_tensor((y_tr - y_mean) / y_std, dtype=torch.float32),
        x_test=torch.as_tensor((x_te - x_mean) / x_std, dtype=torch.float32),
        y_test=torch.as_tensor((y_te - y_mean) / y_std, dtype=torch.float32),
        kind="regression",
        num_classes=None,
        meta={
            "n_train": n_train,
            "n_test": n_test,
            "noise": noise,
            "y_mean": y_mean,
            "y_std": y_std,
            "feature_names": [f"x{i}" for i in range(10)],
            "informative_features": 5,
        },
    )


# ---------------------------------------------------------------------------
# Character language model on the standard library's source
# ---------------------------------------------------------------------------

#: Standard-library files (relative to ``sysconfig.get_paths()["stdlib"]``) whose
#: source, concatenated in this order, is the ``charlm`` corpus (~450 KB on 3.11).
CHARLM_SOURCES: tuple[str, ...] = (
    "argparse.py",
    "collections/__init__.py",
    "contextlib.py",
    "dataclasses.py",
    "fractions.py",
    "functools.py",
    "heapq.py",
    "random.py",
    "shlex.py",
    "statistics.py",
    "string.py",
    "textwrap.py",
)


@functools.lru_cache(maxsize=1)
def _stdlib_corpus() -> tuple[str, tuple[str, ...]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    parts: list[str] = []
    used: list[str] = []
    for rel in CHARLM_SOURCES:
        path = root / rel
        # A module that a future Python moves or drops is skipped rather than
        # fatal; meta["files"] records exactly which ones made the corpus.
        if path.is_file():
            parts.append(path.read_text(encoding="utf-8"))
            used.append(rel)
    if not parts:
        raise FileNotFoundError(
            f"none of the charlm source files {list(CHARLM_SOURCES)} exist under {root}"
        )
    return "\n".join(parts), tuple(used)


def _cut_sequences(ids: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = (len(ids) - 1) // seq_len
    x = ids[: n * seq_len].reshape(n, seq_len)
    y = ids[1 : n * seq_len + 1].reshape(n, seq_len)
    return torch.as_tensor(x, dtype=torch.int64), torch.as_tensor(y, dtype=torch.int64)


@keyword_options
def charlm_data(
    seed: int,
    *,
    n_chars: Annotated[int | None, Range(1)] = None,
    seq_len: Annotated[int, Range(1)] = 64,
    train_fraction: Annotated[float, FRACTION] = 0.9,
) -> TaskData:
    """Next-character prediction on standard-library source code.

    The text (the first ``n_chars`` characters of the corpus, all of it by
    default) is split contiguously ``train_fraction`` / rest, and each part is
    cut into non-overlapping sequences of ``seq_len`` with targets shifted by
    one. The vocabulary is the sorted set of characters of the capped text.
    The data do not depend on ``seed`` (it is validated and recorded only), so
    seeds vary model initialisation and batch order, not the data.
    """
    seed = _check_seed(seed)
    seq_len = check_int(seq_len, "seq_len", minimum=1)
    train_fraction = _check_fraction(train_fraction, "train_fraction")
    text, files = _stdlib_corpus()
    if n_chars is not None:
        n_chars = check_int(n_chars, "n_chars", minimum=1)
        text = text[:n_chars]
    vocab = sorted(set(text))
    lookup = {ch: i for i, ch in enumerate(vocab)}
    ids = np.fromiter((lookup[ch] for ch in text), dtype=np.int64, count=len(text))
    cut = int(len(ids) * train_fraction)
    x_tr, y_tr = _cut_sequences(ids[:cut], seq_len)
    x_te, y_te = _cut_sequences(ids[cut:], seq_len)
    if len(x_tr) == 0 or len(x_te) == 0:
        raise ValueError(
            f"n_chars={len(text)} is too small for seq_len={seq_len} and "
            f"train_fraction={train_fraction}: a split has no full sequence"
        )
    return TaskData(
        x_train=x_tr,
        y_train=y_tr,
        x_test=x_te,
        y_test=y_te,
        kind="lm",
        num_classes=len(vocab),
        meta={
            "vocab": vocab,
            "files": list(files),
            "n_chars": len(text),
            "seq_len": seq_len,
            "train_fraction": train_fraction,
            "seed": seed,
        },
    )


# ---------------------------------------------------------------------------
# CIFAR
# ---------------------------------------------------------------------------

_CIFAR_LAYOUT: dict[int, tuple[str, tuple[str, ...], tuple[str, ...], bytes]] = {
    10: (
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        b"labels",
    ),
    100: ("cifar-100-python", ("train",), ("test",), b"fine_labels"),
}


def _read_cifar_files(
    folder: Path, names: tuple[str, ...], label_key: bytes
) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for name in names:
        path = folder / name
        with path.open("rb") as fh:
            # The CIFAR "python version" files are pickles written by Python 2,
            # hence the bytes keys and encoding="bytes".
            batch = pickle.load(fh, encoding="bytes")
        if b"data" not in batch or label_key not in batch:
            raise ValueError(
                f"{path} lacks the keys b'data' and {label_key!r}; found {sorted(batch)}"
            )
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072:
            raise ValueError(f"{path}: b'data' must have shape (N, 3072), got {data.shape}")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(np.asarray(batch[label_key], dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def _cifar_folder(root: str | Path, variant: int) -> Path:
    """The folder under ``root`` that holds the CIFAR files (FileNotFoundError naming them)."""
    if isinstance(variant, bool) or variant not in _CIFAR_LAYOUT:
        raise ValueError(f"variant must be 10 or 100, got {variant!r}")
    if not isinstance(root, str | Path):
        raise TypeError(f"root must be a str or Path, got {type(root).__name__}")
    folder_name, train_names, test_names, _ = _CIFAR_LAYOUT[variant]
    root = Path(root).expanduser()
    expected = train_names + test_names
    candidates = [root / folder_name, root] if root.name != folder_name else [root]
    folder = next((c for c in candidates if all((c / name).is_file() for name in expected)), None)
    if folder is None:
        where = "does not exist" if not root.exists() else "lacks them"
        raise FileNotFoundError(
            f"CIFAR-{variant} not found: expected the files {list(expected)} in "
            f"{' or '.join(str(c) for c in candidates)} ({root} {where}; the extracted "
            f"'python version' archive, folder {folder_name!r}); nothing is downloaded"
        )
    return folder


def _cifar_missing(variant: int) -> FileNotFoundError:
    folder_name, train_names, test_names, _ = _CIFAR_LAYOUT[variant]
    return FileNotFoundError(
        f"cifar{variant}-resnet needs the option data_dir (--data-opt data_dir=PATH): a local "
        f"folder holding {folder_name}/ with the files {list(train_names + test_names)} (the "
        f"CIFAR 'python version'); nothing is downloaded"
    )


def cifar_check(variant: int) -> Callable[..., None]:
    """The CIFAR tasks' ``check_data``: ``data_dir`` is given and holds the expected files."""

    def check(*, data_dir: str | Path | None = None, **_: object) -> None:
        if data_dir is None:
            raise _cifar_missing(variant)
        _cifar_folder(data_dir, variant)

    return check


def load_cifar(
    root: str | Path, variant: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read the CIFAR-10 or CIFAR-100 "python version" from a local folder.

    ``root`` may be the extracted folder itself (``cifar-10-batches-py`` or
    ``cifar-100-python``) or its parent. Nothing is downloaded.

    Returns:
        ``(x_train, y_train, x_test, y_test)``: images as uint8 arrays of shape
        ``(N, 3, 32, 32)`` and labels as int64 arrays of shape ``(N,)``
        (fine labels for CIFAR-100).

    Raises:
        FileNotFoundError: the expected files are not under ``root``.
        ValueError: ``variant`` is not 10 or 100, or a file is malformed.
    """
    folder = _cifar_folder(root, variant)
    _, train_names, test_names, label_key = _CIFAR_LAYOUT[variant]
    x_train, y_train = _read_cifar_files(folder, train_names, label_key)
    x_test, y_test = _read_cifar_files(folder, test_names, label_key)
    return x_train, y_train, x_test, y_test


def _subset(
    n_have: int, n_want: int | None, name: str, gen: torch.Generator
) -> torch.Tensor | None:
    if n_want is None:
        return None
    n_want = check_int(n_want, name, minimum=1)
    if n_want > n_have:
        raise ValueError(f"{name} must be at most {n_have}, got {n_want}")
    return torch.randperm(n_have, generator=gen)[:n_want].sort().values


def cifar_data(variant: int) -> Callable[..., TaskData]:
    def build(
        seed: int,
        *,
        data_dir: str | Path | None = None,
        n_train: Annotated[int | None, Range(1)] = None,
        n_test: Annotated[int | None, Range(1)] = None,
    ) -> TaskData:
        """CIFAR from ``data_dir``, normalised with per-channel training mean/std.

        The official train/test split is used; ``n_train`` / ``n_test`` take a
        seeded random subset of each for quick runs.
        """
        seed = _check_seed(seed)
        if data_dir is None:
            raise _cifar_missing(variant)
        x_tr, y_tr, x_te, y_te = load_cifar(data_dir, variant)
        gen = torch.Generator().manual_seed(seed)
        idx_tr = _subset(len(y_tr), n_train, "n_train", gen)
        idx_te = _subset(len(y_te), n_test, "n_test", gen)
        xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
        xe, ye = torch.from_numpy(x_te), torch.from_numpy(y_te)
        if idx_tr is not None:
            xt, yt = xt[idx_tr], yt[idx_tr]
        if idx_te is not None:
            xe, ye = xe[idx_te], ye[idx_te]
        xt = xt.float().div_(255.0)
        xe = xe.float().div_(255.0)
        mean = xt.mean(dim=(0, 2, 3), keepdim=True)
        std = xt.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
        return TaskData(
            x_train=(xt - mean) / std,
            y_train=yt,
            x_test=(xe - mean) / std,
            y_test=ye,
            kind="classification",
            num_classes=variant,
            meta={
                "data_dir": str(data_dir),
                "channel_mean": mean.flatten().tolist(),
                "channel_std": std.flatten().tolist(),
                "n_train": int(yt.shape[0]),
                "n_test": int(ye.shape[0]),
            },
        )

    # Rename before wrapping so option errors name the CIFAR variant.
    build.__name__ = build.__qualname__ = f"cifar{variant}_data"
    return keyword_options(build)
