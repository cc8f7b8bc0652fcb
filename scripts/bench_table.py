"""Turn a pytest-benchmark JSON file into the README's ratio table.

In each benchmark group the tests whose names contain ``_ours`` are nndyn_fast; every other test
in the group is a baseline, paired with the runs of ours whose parameter ids include all of its
own (all of them when it has none); the ratio is baseline time / our time (minimum over rounds),
except for baselines named ``*_reference``, units of cost (one gradient), given as our time in
units of theirs.

    pytest bench --benchmark-json=bench.json && python scripts/bench_table.py bench.json
"""

import argparse
import json
import re
from collections import defaultdict


def _param(name: str) -> str:
    m = re.search(r"\[(.*)\]$", name)
    return m.group(1) if m else ""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("json", help="output of pytest --benchmark-json")
    o = p.parse_args()
    with open(o.json) as f:
        data = json.load(f)
    groups: dict[str, list[dict]] = defaultdict(list)
    for b in data["benchmarks"]:
        groups[b["group"] or ""].append(b)
    info = data.get("machine_info", {})
    print(
        f"Machine: {info.get('cpu', {}).get('brand_raw', '?')}, "
        f"{info.get('cpu', {}).get('count', '?')} cores; date {data.get('datetime', '?')[:10]}"
    )
    print()
    print("| group | ours | ours (ms) | baseline | baseline (ms) | speed-up |")
    print("| --- | --- | ---: | --- | ---: | ---: |")
    for group, items in sorted(groups.items()):
        for ours in (b for b in items if "_ours" in b["name"]):
            t_ours = ours["stats"]["min"]
            param = _param(ours["name"])
            for b in items:
                if b is ours or not _pairs(_param(b["name"]), param, "_ours" in b["name"]):
                    continue
                t = b["stats"]["min"]
                # a "_reference" test is a unit of cost (e.g. one gradient), not a competitor
                ratio = (
                    f"ours = {t_ours / t:.2f} x reference"
                    if "_reference" in b["name"]
                    else f"{t / t_ours:.2f}x"
                )
                print(
                    f"| {group} | {_name(ours)} | {1e3 * t_ours:.3g} | {_name(b)} | "
                    f"{1e3 * t:.3g} | {ratio} |"
                )


def _pairs(p_base: str, p_ours: str, base_is_ours: bool) -> bool:
    # a baseline pairs with the runs of ours whose parameter ids include all of its own (all of
    # them when it has none); runs of ours are never baselines of each other
    if base_is_ours:
        return False
    return p_base == "" or set(p_base.split("-")) <= set(p_ours.split("-"))


def _name(b: dict) -> str:
    return re.sub(r"^test_", "", b["name"])


if __name__ == "__main__":
    main()
