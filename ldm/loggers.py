"""CSV and TensorBoard loggers whose history survives resumes.

Lightning's CSVLogger deletes `metrics.csv` when a run restarts in the same folder, so resuming
a killed run (what `make demo` does) lost the loss history before the kill. Here a resumed run
keeps the rows of the steps before the checkpoint it resumes from and drops the later ones
(those steps run again and are logged again), so the file holds every step exactly once. The row
Lightning logs just after a checkpoint is saved comes from the checkpoint (`ldm.callbacks.PendingLogRow`),
a row cut short by a kill is dropped, and every rewrite of the file is atomic.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from lightning_fabric.utilities.rank_zero import rank_zero_only
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment

from ldm.io import atomic_text_writer


class _ResumingWriter(ExperimentWriter):
    """ExperimentWriter that keeps `metrics.csv` rows with step < `resume_step` instead of deleting the file,
    and puts back `resume_row` ({"step", "metrics"}: the row the checkpoint carries, `ldm.callbacks.PendingLogRow`)."""

    def __init__(self, log_dir: str, resume_step: int, resume_row: dict[str, Any] | None = None) -> None:
        self.resume_step = resume_step
        self.resume_row = resume_row
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:  # called by the writer's __init__, where Lightning deletes the file
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as f:
            text = f.read()
        if not text.endswith(("\n", "\r")):  # a kill in the middle of an append: drop the cut-short row
            text = text[: text.rfind("\n") + 1]
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = list(reader.fieldnames or [])
        rows = [row for row in reader if row.get("step") and int(float(row["step"])) < self.resume_step]
        if self.resume_row is not None:  # in the log or not (a kill right after the save), it ends up there once
            row = {**self.resume_row["metrics"], "step": self.resume_row["step"]}
            rows = [r for r in rows if {k for k, v in r.items() if v not in ("", None)} != set(row)
                    or int(float(r["step"])) != row["step"]]  # fmt: skip
            rows.append(row)
            header = sorted(set(header) | set(row))  # sorted, as Lightning's writer keeps its keys
        self._write(header, rows)
        self.metrics_keys = header  # later rows append under this header (or rewrite it when keys are new)

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:  # Lightning's rewrite, made atomic
        with self._fs.open(self.metrics_file_path, "r", newline="") as f:
            rows = list(csv.DictReader(f))
        self._write(fieldnames, rows)

    def _write(self, header: list[str], rows: list[dict[str, Any]]) -> None:
        """Replace metrics.csv by `header` and `rows`, all or nothing (a kill here must not lose the history)."""
        with atomic_text_writer(self.metrics_file_path, newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)


class ResumableCSVLogger(CSVLogger):
    """CSVLogger that, given the global step of the checkpoint a run resumes from (and the log row it
    carries), appends to its history."""

    def __init__(
        self, *args: Any, resume_step: int | None = None, resume_row: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.resume_step = resume_step
        self.resume_row = resume_row

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            if self.resume_step is None:
                self._experiment = ExperimentWriter(log_dir=self.log_dir)
            else:
                self._experiment = _ResumingWriter(self.log_dir, self.resume_step, self.resume_row)
        return self._experiment


def tensorboard_logger(
    save_dir: str, resume_step: int | None = None, resume_row: dict[str, Any] | None = None
) -> TensorBoardLogger:
    """A TensorBoardLogger in `<save_dir>/tensorboard` whose history, resumed at `resume_step`, holds each step once.

    A resumed run logs the steps from `resume_step` on again, so TensorBoard's own mechanism hides
    the earlier run's events of those steps: SummaryWriter's `purge_step` writes a SessionLog.START
    at `resume_step`, and TensorBoard drops the older files' events at or after it. The row the
    checkpoint carries (`resume_row`, step resume_step - 1; see `ldm.callbacks.PendingLogRow`) is
    logged again only where the earlier files lack it.
    """
    if resume_step is None:
        return TensorBoardLogger(save_dir=save_dir, name="", version="tensorboard")
    logger = TensorBoardLogger(save_dir=save_dir, name="", version="tensorboard", purge_step=resume_step)
    if resume_row is not None and rank_zero_only.rank == 0 and not _has_row(logger.log_dir, resume_row):
        logger.log_metrics(resume_row["metrics"], step=resume_row["step"])
    return logger


def _has_row(log_dir: str, row: dict[str, Any]) -> bool:
    """Whether the event files in `log_dir` hold every scalar of `row` ({"step", "metrics"}) at its step."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:  # tensorboardX alone writes events but cannot read them: log the row
        return False
    events = EventAccumulator(log_dir, size_guidance={"scalars": 0})  # 0: keep every event
    events.Reload()
    tags = set(events.Tags().get("scalars", []))
    return all(tag in tags and any(e.step == row["step"] for e in events.Scalars(tag)) for tag in row["metrics"])
