"""``pomona serve`` under load: throughput and latency against a same-run ceiling (and peers).

Starts, on 127.0.0.1 only, a constant-response ceiling (``bench.serve_servers``) and
``pomona serve``, one process each; with ``--peers`` (``make bench-peers``) also MLServer
(``bench.serve_peers``), installed into its own virtualenv on first use. Each load of
``bench.serve_load`` runs against every server in turn, best of ``ROUNDS`` alternating
runs, and ``bench.serve_report`` prints what was measured in this run only: shares of the
ceiling, ratios to the peers when they ran, and targets judged only without errors.

    python -m bench.serve [--peers]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from bench.serve_load import (
    DURATION_S,
    HOST,
    WARMUP_S,
    Load,
    Result,
    answers_correctly,
    best,
    loads,
    measure,
    warm_up,
)
from bench.serve_report import Results, report
from bench.serve_servers import MODEL_NAME, Server, model, start_ceiling, start_pomona, stop

ROUNDS = 3  # alternating runs per server and load; the best counts
NO_PEERS = "not measured (make bench-peers measures MLServer in the same run)"


def _check(servers: list[Server], load_list: list[Load], predictor: object) -> set[str]:
    """The loads each server answers correctly; pomona must answer all of them."""
    for load in load_list:
        if not answers_correctly(servers[1].port, load, predictor):
            raise SystemExit(f"pomona serve refused the {load.name} request")
    names = {load.name for load in load_list}
    for server in servers[2:]:
        names &= {
            load.name
            for load in load_list
            if answers_correctly(server.port, load, predictor, refusal_ok=True)
        }
    return names


def _run_loads(
    servers: list[Server], load_list: list[Load], peer_loads: set[str], workdir: Path, wrk: bool
) -> Results:
    """Each load against every server that speaks it, best of ROUNDS alternating runs."""
    results: Results = {}
    for load in load_list:
        here = [s for s in servers if s.name in ("ceiling", "pomona") or load.name in peer_loads]
        for server in here:
            warm_up(server.port, load, workdir, wrk)
        runs: dict[str, list[Result]] = {server.name: [] for server in here}
        for _ in range(ROUNDS):
            for server in here:
                runs[server.name].append(measure(server.port, server.pid, load, workdir, wrk))
        results[load.name] = {name: best(found) for name, found in runs.items()}
    return results


def main(peers: bool = False) -> None:
    wrk = shutil.which("wrk") is not None
    if not wrk:
        print(
            "wrk is not installed (Debian/Ubuntu: sudo apt-get install wrk; macOS: brew install "
            "wrk); using a bounded Python load loop instead, which saturates before the servers "
            "do: its absolute numbers understate them, and the ratios shrink toward 1."
        )
    from pomona.runtime.predictor import Predictor

    with tempfile.TemporaryDirectory(prefix="pomona-bench-serve-") as tmp:
        workdir = Path(tmp)
        model_path, model_note = model(workdir)
        load_list = loads(f"/v2/models/{MODEL_NAME}/infer")
        procs: list[subprocess.Popen[bytes]] = []
        peer_problem: str | None = NO_PEERS
        try:
            # All servers run side by side and take turns under load, so that each sees the
            # same background activity.
            ceiling_proc, ceiling = start_ceiling()
            procs.append(ceiling_proc)
            pomona_proc, pomona = start_pomona(model_path)
            procs.append(pomona_proc)
            servers = [ceiling, pomona]
            if peers:
                from bench.serve_peers import start_peers

                peer_procs, peer_servers, peer_problem = start_peers(workdir, model_path)
                procs += peer_procs
                servers += peer_servers
            print(
                f"model: {model_note}; one server process each, {HOST} only; "
                f"load: {'wrk -t1' if wrk else 'Python asyncio loop'}, {WARMUP_S}s warm-up, "
                f"then best of {ROUNDS} alternating {DURATION_S}s runs per server; "
                f"{os.cpu_count()} CPUs; servers: {', '.join(s.name for s in servers)}",
                flush=True,
            )
            peer_loads = _check(servers, load_list, Predictor(model_path))
            results = _run_loads(servers, load_list, peer_loads, workdir, wrk)
        finally:
            for proc in reversed(procs):
                stop(proc)
    report(load_list, results, peer_problem)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__)
    parser.add_argument("--peers", action="store_true", help="also measure MLServer")
    main(peers=parser.parse_args().peers)
