"""loss.png for a run: train and val loss against optimizer step, rewritten atomically."""
from __future__ import annotations

import io
import json
from pathlib import Path

from midigen.fsutil import atomic_write_bytes


def read_log(path) -> list[dict]:
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        rows.append(json.loads(line))
                    except ValueError:
                        pass  # a line cut short by a kill
    except FileNotFoundError:
        pass
    return rows


def plot_losses(log_path, png_path, title: str = "") -> bool:
    """Draw train (per logged step) and val (per eval) loss; False when there is nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed, and never steal focus on a desktop
    import matplotlib.pyplot as plt

    rows = read_log(log_path)
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    if not train and not val:
        return False
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    if train:
        ax.plot(*zip(*train), lw=0.8, alpha=0.8, label="train")
    if val:
        ax.plot(*zip(*val), "o-", ms=3, lw=1.5, label="val")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats per token)")
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(Path(png_path), buf.getvalue())
    return True
