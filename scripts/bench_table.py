"""Turn a pytest-benchmark JSON file into the README's ratio table.

In each benchmark group the test whose name contains ``_ours`` is nndyn_fast; every other test
in the group is a baseline, and the ratio is baseline time / our time (minimum over rounds).

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
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for b in data["benchmarks"]:
        groups[(b["group"] or "", _param(b["name"]))].append(b)
    info = data.get("machine_info", {})
    print(
        f"Machine: {info.get('cpu', {}).get('brand_raw', '?')}, "
        f"{info.get('cpu', {}).get('count', '?')} cores; date {data.get('datetime', '?')[:10]}"
    )
    print()
    print("| group | ours (ms) | baseline | baseline (ms) | speed-up |")
    print("| --- | ---: | --- | ---: | ---: |")
    for (group, param), items in sorted(groups.items()):
        ours = [b for b in items if "_ours" in b["name"]]
        if not ours:
            continue
        t_ours = ours[0]["stats"]["min"]
        label = f"{group} [{param}]" if param else group
        for b in items:
            if b is ours[0]:
                continue
            t = b["stats"]["min"]
            base = re.sub(r"^test_|\[.*\]$", "", b["name"])
            print(f"| {label} | {1e3 * t_ours:.3g} | {base} | {1e3 * t:.3g} | {t / t_ours:.2f}x |")


if __name__ == "__main__":
    main()
