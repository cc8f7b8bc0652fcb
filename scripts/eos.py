"""Reproduce the edge-of-stability figure: sharpness rises to 2/η and hovers there.

Usage: python scripts/eos.py [out_dir]   (writes eos_lr<η>.h5 run files and eos.png)
"""

import sys
from pathlib import Path

from nndyn_fast.training import eos_experiment, plot_eos

if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    out.mkdir(parents=True, exist_ok=True)
    runs = eos_experiment((0.2, 0.25, 0.3), out_dir=out, overwrite=True)
    for lr, run in sorted(runs.items()):
        s = run.sharpness[:, 0]
        print(f"lr={lr:g}  2/lr={2 / lr:.3g}  sharpness start {s[0]:.3g}  end {s[-1]:.3g}")
    plot_eos(runs, out / "eos.png")
    print(f"figure: {out / 'eos.png'}")
