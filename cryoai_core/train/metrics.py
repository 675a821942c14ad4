"""``metrics.csv`` of a run: one row per logged step, rewritten whole (atomically) at every update.

A resumed run first drops the rows past its checkpoint's step (they belong to training the checkpoint
does not hold and that will be redone), so the file never repeats or mixes steps.
"""
import csv
import logging
import os

from cryoai_core.io.atomic import atomic_open

logger = logging.getLogger(__name__)

METRICS_NAME = "metrics.csv"
METRIC_COLUMNS = ("step", "epoch", "phase", "radius_px", "loss", "agreement_degrees", "images_per_s",
                  "elapsed_s")


class MetricsLog:
    """The rows of ``outdir/metrics.csv``, kept in memory and written through :func:`atomic_open`."""

    def __init__(self, outdir: str):
        self.path = os.path.join(outdir, METRICS_NAME)
        self.rows = []

    def load(self, up_to_step: int) -> None:
        """Read the existing file, keeping the rows with ``step <= up_to_step`` (rewritten if any was dropped)."""
        if not os.path.exists(self.path):
            return
        with open(self.path, newline="") as handle:
            rows = [row for row in csv.DictReader(handle) if row.get("step", "").isdigit()]
        kept = [row for row in rows if int(row["step"]) <= up_to_step]
        self.rows = [{column: row.get(column, "") for column in METRIC_COLUMNS} for row in kept]
        if len(kept) != len(rows):
            logger.info("%s: dropped %d row(s) after step %d (not in the checkpoint)", self.path,
                        len(rows) - len(kept), up_to_step)
            self.write()

    @property
    def last_step(self) -> int:
        return int(self.rows[-1]["step"]) if self.rows else -1

    def append(self, row: dict) -> None:
        """Add ``row`` (replacing a row of the same step) and rewrite the file."""
        if self.rows and int(self.rows[-1]["step"]) >= int(row["step"]):
            self.rows = [kept for kept in self.rows if int(kept["step"]) < int(row["step"])]
        self.rows.append({column: row.get(column, "") for column in METRIC_COLUMNS})
        self.write()

    def write(self) -> None:
        with atomic_open(self.path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=METRIC_COLUMNS)
            writer.writeheader()
            writer.writerows(self.rows)
