"""``pomona serve`` over REST against another checkout of it, alternating, in one run.

    python -m bench.serve_ab BEFORE [--rounds N]

BEFORE is a checkout of another commit (``git worktree add /tmp/before SHA``); its
``runtime/`` is imported as ``pomona.runtime`` by a ``pomona serve`` started with this
environment's Python and packages, so only Pomona's own code differs. Both servers serve
the same model and run on CPU 0; the load (wrk, or the Python loop) runs on the other
CPUs. The loads of ``python -m bench.serve`` (one row at 32 connections; 1000 rows as JSON
and as binary tensor data at 8) alternate between the two servers for ``--rounds``
rounds, which of them goes first alternating too; the report gives each server's median
and best requests/s, its median server CPU per request, and the median of the per-round
ratios (this checkout over BEFORE).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from bench.serve_grpc import cpu_split
from bench.serve_load import Result, loads, measure, warm_up
from bench.serve_servers import MODEL_NAME, free_port, model, start, stop

ROUNDS = 5


def _start(model_path: Path, cpus: set[int] | None, checkout: Path | None, shim: Path) -> tuple:
    """``pomona serve`` of this checkout, or of ``checkout`` (through the ``shim`` path)."""
    env = dict(os.environ)
    if checkout is not None:
        (shim / "pomona").mkdir(parents=True, exist_ok=True)
        (shim / "pomona" / "runtime").symlink_to(checkout.resolve() / "runtime")
        env["PYTHONPATH"] = str(shim)
    port = free_port()
    command = [
        sys.executable, "-m", "pomona.runtime.cli", "serve", str(model_path),
        "--port", str(port), "--name", MODEL_NAME, "--log-level", "warning",
    ]  # fmt: skip
    return start(command, port, "/v2/health/ready", env=env, cpus=cpus), port


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path, help="checkout of the commit to compare with")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    args = parser.parse_args(argv)
    server_cpus, load_cpus = cpu_split()
    if load_cpus:
        os.sched_setaffinity(0, load_cpus)  # the load generator inherits it
    wrk = shutil.which("wrk") is not None
    with tempfile.TemporaryDirectory(prefix="pomona-bench-ab-") as tmp:
        workdir = Path(tmp)
        model_path, what = model(workdir)
        print(f"model: {what}; load: {'wrk -t1' if wrk else 'Python loop'}; servers on CPU "
              f"{sorted(server_cpus or [])}, load on {sorted(load_cpus or [])}; {args.rounds} "
              f"alternating rounds; load average {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
        servers = {
            "now": _start(model_path, server_cpus, None, workdir / "now"),
            "before": _start(model_path, server_cpus, args.before, workdir / "before"),
        }
        try:
            for load in loads(f"/v2/models/{MODEL_NAME}/infer"):
                runs: dict[str, list[Result]] = {name: [] for name in servers}
                for _, port in servers.values():
                    warm_up(port, load, workdir, wrk)
                for round_ in range(args.rounds):  # now first, then before first, ...
                    order = list(servers.items())[:: 1 if round_ % 2 == 0 else -1]
                    for name, (proc, port) in order:
                        runs[name].append(measure(port, proc.pid, load, workdir, wrk))
                _report(load.name, runs)
        finally:
            for proc, _ in servers.values():
                stop(proc)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


def _report(load: str, runs: dict[str, list[Result]]) -> None:
    for name, done in runs.items():
        rates = [run.requests_per_s for run in done]
        cpus = [run.cpu_us_per_request for run in done if run.cpu_us_per_request]
        print(f"{load:<15}{name:<8}median {statistics.median(rates):9,.0f} req/s  best "
              f"{max(rates):9,.0f}  server CPU {statistics.median(cpus):6.0f} us/req  "
              f"errors {sum(run.errors for run in done)}")  # fmt: skip
    ratios = sorted(
        now.requests_per_s / before.requests_per_s
        for now, before in zip(runs["now"], runs["before"], strict=True)
    )
    print(f"{load:<15}now / before: {statistics.median(ratios):.2f}x "
          f"({ratios[0]:.2f}x-{ratios[-1]:.2f}x over the rounds)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
