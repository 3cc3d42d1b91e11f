"""A CSV logger whose history survives resumes.

Lightning's CSVLogger deletes `metrics.csv` when a run restarts in the same folder, so resuming
a killed run (what `make demo` does) lost the loss history before the kill. Here a resumed run
keeps the rows of the steps before the checkpoint it resumes from and drops the later ones
(those steps run again and are logged again), so the file holds every step exactly once.
"""

from __future__ import annotations

import csv
from typing import Any

from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment


class _ResumingWriter(ExperimentWriter):
    """ExperimentWriter that keeps `metrics.csv` rows with step < `resume_step` instead of deleting the file."""

    def __init__(self, log_dir: str, resume_step: int) -> None:
        self.resume_step = resume_step
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:  # called by the writer's __init__, where Lightning deletes the file
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = [row for row in reader if row.get("step") and int(float(row["step"])) < self.resume_step]
        with self._fs.open(self.metrics_file_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)
        self.metrics_keys = header  # later rows append under this header (or rewrite it when keys are new)


class ResumableCSVLogger(CSVLogger):
    """CSVLogger that, given the global step of the checkpoint a run resumes from, appends to its history."""

    def __init__(self, *args: Any, resume_step: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resume_step = resume_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            if self.resume_step is None:
                self._experiment = ExperimentWriter(log_dir=self.log_dir)
            else:
                self._experiment = _ResumingWriter(self.log_dir, self.resume_step)
        return self._experiment
