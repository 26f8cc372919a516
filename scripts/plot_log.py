#!/usr/bin/python3
"""Plots a run's training curves: train loss, validation loss and top-1/top-5 accuracy per epoch.

Usage: scripts/plot_log.py RUN_DIR [OUT.png]   (reads RUN_DIR/log.txt; default RUN_DIR/curves.png)
Needs matplotlib (Debian: apt-get install python3-matplotlib, for /usr/bin/python3, which the
first line names: a python3 found first on PATH may lack it).
"""
import json
import sys
from pathlib import Path

try:
    import matplotlib
except ImportError:
    sys.exit("plot_log: needs matplotlib (Debian: apt-get install python3-matplotlib)")

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def main() -> int:
    if len(sys.argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    run = Path(sys.argv[1])
    out = Path(sys.argv[2]) if len(sys.argv) == 3 else run / "curves.png"
    try:
        rows = [json.loads(line) for line in (run / "log.txt").read_text().splitlines() if line]
    except OSError as e:
        print(f"plot_log: cannot read {run / 'log.txt'}: {e.strerror}", file=sys.stderr)
        return 1
    if not rows:
        print(f"plot_log: {run / 'log.txt'} has no epochs yet", file=sys.stderr)
        return 1
    epochs = [r["epoch"] + 1 for r in rows]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    loss_ax.plot(epochs, [r["train_loss"] for r in rows], label="train loss")
    loss_ax.plot(epochs, [r["test_loss"] for r in rows], label="val loss (cross-entropy)")
    loss_ax.set_xlabel("epoch")
    loss_ax.legend()
    acc_ax.plot(epochs, [r["test_acc1"] for r in rows], label="val top-1")
    acc_ax.plot(epochs, [r["test_acc5"] for r in rows], label="val top-5")
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("%")
    acc_ax.set_ylim(0, 101)  # a top-5 of 100% stays in sight
    acc_ax.legend()
    for ax in (loss_ax, acc_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no 1.5 tick
    fig.suptitle(str(run))
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
