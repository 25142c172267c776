"""Run every benchmark, or those named: ``python -m bench [NAME ...]`` (see ``SUITES``)."""

from __future__ import annotations

import importlib
import sys

SUITES = [
    "train_loader",
    "train_process",
    "train_scale",
    "predict",
    "predict_ray",
    "serve",
    "serve_grpc",
    "edge",
]


def main(argv: list[str]) -> int:
    names = argv or SUITES
    unknown = sorted(set(names) - set(SUITES))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(SUITES)}")
        return 2
    for name in names:
        print(f"\n=== bench {name} ===", flush=True)
        importlib.import_module(f"bench.{name}").main()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
