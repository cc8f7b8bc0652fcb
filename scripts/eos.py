"""Reproduce the edge-of-stability figure: sharpness rises to 2/η and hovers there.

Usage: python scripts/eos.py [out_dir]   (writes eos_lr<η>.h5 run files and eos.png)
"""

import sys
from pathlib import Path

from nndyn_fast.training import eos_experiment, eos_summary, plot_eos

if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    out.mkdir(parents=True, exist_ok=True)
    runs = eos_experiment((0.2, 0.25, 0.3), out_dir=out, overwrite=True)
    print(eos_summary(runs))
    plot_eos(runs, out / "eos.png")
    print(f"figure: {out / 'eos.png'}")
