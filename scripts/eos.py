"""Reproduce the edge-of-stability figure: sharpness rises to 2/η and hovers there.

Usage: python scripts/eos.py [out_dir] [--resume]   (writes eos_lr<η>.h5 run files and eos.png;
``--resume`` continues an interrupted reproduction instead of starting it again)
"""

import argparse
from pathlib import Path

from nndyn_fast.plots import plot_eos
from nndyn_fast.training import eos_experiment, eos_summary

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?", default=".", help="folder of the run files")
    parser.add_argument("--resume", action="store_true", help="continue the runs in out_dir")
    args = parser.parse_args()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = eos_experiment(
        (0.2, 0.25, 0.3), out_dir=out, overwrite=not args.resume, resume=args.resume
    )
    print(eos_summary(runs))
    plot_eos(runs, out / "eos.png")
    print(f"figure: {out / 'eos.png'}")
