"""Training scalars: a CSV (one row per log step), a loss-curve PNG, and TensorBoard event files
(`tensorboard --logdir OUT/tensorboard`). Rows past a resumed step are dropped from the CSV, and
TensorBoard is told to purge them (`purge_step`), so a resumed run's curves have no duplicated stretch.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on robots and CI
import matplotlib.pyplot as plt  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

from policy.artifacts import atomic_write_bytes  # noqa: E402


class MetricsLog:
    FIELDS = ["step", "loss", "lr", "grad_norm", "samples_per_s", "elapsed_s", "val_loss", "grounding_acc",
              "grounding_err_m", "start_grounding_err_m", "start_guess_err_m", "grounding_cell_acc",
              "referent_cell_acc", "start_cell_acc"]

    def __init__(self, out: Path, resume_step: int):
        self.path, self.rows = out / "metrics.csv", []
        if resume_step > 0 and self.path.exists():
            with open(self.path) as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        self.tensorboard = SummaryWriter(str(out / "tensorboard"), purge_step=resume_step or None)

    def add(self, row: dict) -> None:
        """row: {field: number or str}; unknown fields are refused (a typo would vanish silently)."""
        unknown = sorted(set(row) - set(self.FIELDS))
        if unknown:
            raise KeyError(f"metrics: unknown fields {unknown}; expected among {self.FIELDS}")
        self.rows.append({k: row.get(k, "") for k in self.FIELDS})
        step = int(row["step"])
        for key, value in row.items():
            if key != "step" and value not in ("", None):
                group = "val" if key.startswith(("val_", "grounding", "start_", "referent")) else "train"
                self.tensorboard.add_scalar(f"{group}/{key}", float(value), step)

    def flush(self, title: str) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.FIELDS)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_bytes(self.path, buf.getvalue().encode())
        self.tensorboard.flush()
        self.plot(title)

    def close(self) -> None:
        self.tensorboard.close()

    def plot(self, title: str) -> None:
        steps = [int(r["step"]) for r in self.rows if r["loss"] != ""]
        losses = [float(r["loss"]) for r in self.rows if r["loss"] != ""]
        if not steps:
            return
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(steps, losses, label="train loss")
        val = [(int(r["step"]), float(r["val_loss"])) for r in self.rows if r["val_loss"] not in ("", None)]
        if val:
            ax.plot(*zip(*val), "o-", label="held-out loss")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.legend()
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        atomic_write_bytes(self.path.with_name("loss.png"), buf.getvalue())
