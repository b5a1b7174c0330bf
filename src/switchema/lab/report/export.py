"""The metric rows in the formats people load: a tidy CSV (pandas, R, a spreadsheet) and,
optionally, TensorBoard event files. Both are written from the saved rows, so ``switchema
report`` rebuilds them for any run folder.

``metrics.csv`` has one row per seed, method, model and epoch, and the columns of
:data:`CSV_COLUMNS` that the run has (in that order; an empty cell where a row has no value,
e.g. ``switched`` for averaged models). Accuracies, calibration errors and memorisation rates
are fractions in [0, 1] (the tables of ``summary.md`` show them in %); losses are in nats.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from ..checkpoint import atomic_write_text
from ..errors import MissingDependencyError
from ..keys import ModelKey

__all__ = [
    "CSV_COLUMNS",
    "LiveTensorBoard",
    "write_csv",
    "write_tensorboard",
    "tensorboard_writer",
]

#: column -> what it holds (docs/lab/run-folders.md lists the same)
CSV_COLUMNS: dict[str, str] = {
    "seed": "training seed (initial weights, batch order)",
    "method": "baseline, ema, sema, sema-openmixup or swa",
    "model": "online (the weights trained), avg, or avg@<decay> with several decays",
    "epoch": "epochs completed, 1-based",
    "step": "optimizer steps completed",
    "switched": "online rows of switching methods: a switch happened at this epoch's end",
    "train_loss": "loss on the whole training set (the labels trained on), nats",
    "train_loss_running": "online rows: mean training-batch loss during the epoch, nats",
    "test_loss": "loss on the test set, nats",
    "train_acc": "accuracy on the training set (labels trained on), fraction",
    "test_acc": "test accuracy, fraction",
    "test_nll": "test negative log-likelihood, nats",
    "ece15": "expected calibration error, 15 equal-width bins, fraction",
    "ece100_mass": "expected calibration error, 100 equal-mass bins, fraction",
    "noisy_memorised": "flipped training labels the model predicts, fraction",
    "noisy_true_recovered": "flipped training labels whose true class it predicts, fraction",
    "clean_train_acc": "accuracy on the training examples whose labels were not flipped, fraction",
    "test_mse": "regression: test mean squared error (standardised target)",
    "test_mae": "regression: test mean absolute error (standardised target)",
    "test_bpc": "language model: test bits per character",
    "val_loss": "loss on the validation split (carved from the training data), nats",
    "val_acc": "validation accuracy, fraction",
    "val_nll": "validation negative log-likelihood, nats",
    "val_ece15": "validation ECE, 15 equal-width bins, fraction",
    "val_ece100_mass": "validation ECE, 100 equal-mass bins, fraction",
    "val_mse": "regression: validation mean squared error (standardised target)",
    "val_mae": "regression: validation mean absolute error (standardised target)",
    "val_bpc": "language model: validation bits per character",
    "temperature": "final epoch: the temperature fitted on the validation predictions",
    "ece15_ts": "final epoch: test ECE (15 equal-width bins) after temperature scaling, fraction",
    "ece100_mass_ts": "final epoch: test ECE (100 equal-mass bins) after temperature scaling",
    "train_time_s": "seconds of training in this epoch (not evaluation)",
}


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    present = {k for r in rows for k in r}
    known = [c for c in CSV_COLUMNS if c in present]
    return known + sorted(present - set(known))  # a plugin's extra metric goes last


def write_csv(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Write ``rows`` as a tidy CSV (columns :data:`CSV_COLUMNS`); returns the path."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_columns(rows), restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())
    return Path(path)


def tensorboard_writer():
    """TensorBoard's ``SummaryWriter`` (via torch), or :class:`MissingDependencyError`."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise MissingDependencyError(
            "--tensorboard needs TensorBoard: pip install 'switchema[tensorboard]' (or pip "
            "install tensorboard)"
        ) from None
    return SummaryWriter


_SKIP = {"seed", "method", "model", "epoch", "step", "switched"}


def _run_name(row: dict[str, Any]) -> str:
    """``method/model/seed<N>``: a TensorBoard run per model and seed."""
    return f"{ModelKey(row['method'], row['model']).format()}/seed{row['seed']}"


def _add_row(writer: Any, row: dict[str, Any]) -> None:
    for key, value in row.items():
        if key not in _SKIP and isinstance(value, int | float):
            writer.add_scalar(key, value, global_step=int(row["epoch"]))


def write_tensorboard(rows: list[dict[str, Any]], folder: str | Path) -> Path:
    """Event files under ``folder``: one TensorBoard run per ``method/model/seed``, one scalar
    per metric column, the epoch as the step. Event files already there (written while the
    run trained, :class:`LiveTensorBoard`, or by an earlier report) are replaced, so every
    scalar appears once. Returns ``folder``."""
    writer_cls = tensorboard_writer()
    folder = Path(folder)
    by_run: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_run.setdefault(_run_name(r), []).append(r)
    for name, run_rows in by_run.items():
        for old in (folder / name).glob("events.out.tfevents.*"):
            old.unlink()
        writer = writer_cls(log_dir=str(folder / name))
        try:
            for r in run_rows:
                _add_row(writer, r)
        finally:
            writer.close()
    return folder


class LiveTensorBoard:
    """TensorBoard events written while a run trains: after each epoch of a job, its new
    metric rows (read from the job's ``metrics.jsonl``) go to ``<cell>/tensorboard/`` of every
    cell that uses the job, and are flushed, so TensorBoard shows the run as it goes. The
    report rewrites them from the saved rows when the cell is done (:func:`write_tensorboard`).

    ``cells``: job id -> the cell folders that use it; ``job_dirs``: job id -> its folder.
    """

    def __init__(self, cells: dict[str, list[Path]], job_dirs: dict[str, Path]) -> None:
        self.writer_cls = tensorboard_writer()
        self.cells, self.job_dirs = cells, job_dirs
        self.writers: dict[Path, Any] = {}

    def epoch(self, event: dict[str, Any]) -> None:
        """Write the rows of epoch ``event["epoch"]`` of job ``event["job"]`` and flush them."""
        job, epoch = event["job"], int(event["epoch"])
        try:
            text = (self.job_dirs[job] / "metrics.jsonl").read_text()
        except OSError:
            return
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        touched = set()
        for row in rows:
            if int(row["epoch"]) != epoch:
                continue
            for cell in self.cells.get(job, []):
                log_dir = cell / "tensorboard" / _run_name(row)
                if log_dir not in self.writers:
                    self.writers[log_dir] = self.writer_cls(log_dir=str(log_dir))
                _add_row(self.writers[log_dir], row)
                touched.add(log_dir)
        for log_dir in touched:
            self.writers[log_dir].flush()

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()
