"""The serving benchmark's report: a table, shares of the ceiling, ratios to peers, targets.

Every figure printed was measured in this run, on this machine. Targets are judged only
on a run without failed requests; peers' ratios and targets appear only when the peers
were measured (``make bench-peers``).
"""

from __future__ import annotations

from bench.serve_load import ROWS_LARGE, Load, Result

Results = dict[str, dict[str, Result]]  # load name -> server name -> best result


def fmt_rate(value: float) -> str:
    return f"{value / 1e6:.2f}M" if value >= 1e5 else f"{value:,.0f}"


def _ratio(value: float, reference: float) -> str:
    return f"{value / reference:.1f}x" if reference > 0 else "n/a"


def report(loads: list[Load], results: Results, peers: str | None) -> None:
    """Print the run; ``peers`` says why no peer was measured (``None``: they were)."""
    _table(loads, results, peers)
    print()
    for load in loads:
        share = results[load.name]["pomona"].requests_per_s / _ceiling(results, load.name)
        print(f"  {load.name:<15} pomona reaches {share:.0%} of the same-run ceiling")
    errors = sum(r.errors for by_server in results.values() for r in by_server.values())
    if peers is None and not all("mlserver" in results[n] for n in ("1row_c32", "json1000_c8")):
        peers = "refused the JSON loads; see its answers above"
    if peers is None:
        _against_mlserver(results)
    else:
        print(f"\nMLServer: {peers}")
    _targets(results, judged=errors == 0, with_peers=peers is None)
    if errors:
        print(f"WARNING: {errors} requests failed; the numbers above are not valid")


def _ceiling(results: Results, load: str) -> float:
    return results[load]["ceiling"].requests_per_s


def _table(loads: list[Load], results: Results, peers: str | None) -> None:
    print(
        f"\n{'load':<15}{'server':<10}{'req/s':>10}{'rows/s':>10}{'p99 ms':>9}"
        f"{'cpu us/req':>12}{'errors':>8}{'of ceiling':>12}"
    )
    for load in loads:
        ceiling = _ceiling(results, load.name)
        for who in ("ceiling", "pomona", "mlserver"):
            result = results[load.name].get(who)
            if result is None:
                if who == "mlserver" and peers is None:
                    print(f"{load.name:<15}{who:<10}  n/a: refuses binary tensor data (status 500)")
                continue
            cpu = f"{result.cpu_us_per_request:.0f}" if result.cpu_us_per_request else "-"
            print(
                f"{load.name:<15}{who:<10}{fmt_rate(result.requests_per_s):>10}"
                f"{fmt_rate(result.rows_per_s(load.rows)):>10}{result.p99_ms:>9.2f}"
                f"{cpu:>12}{result.errors:>8}{result.requests_per_s / ceiling:>11.0%}"
            )


def _against_mlserver(results: Results) -> None:
    one, js = results["1row_c32"], results["json1000_c8"]
    binary = results["binary1000_c8"]
    ml_one, ml_js = one["mlserver"], js["mlserver"]
    rows = js["pomona"].rows_per_s(ROWS_LARGE)
    ml_rows = ml_js.rows_per_s(ROWS_LARGE)
    print("\npomona against MLServer, measured in this run:")
    print(
        f"  1 row, c=32:           {_ratio(one['pomona'].requests_per_s, ml_one.requests_per_s)} "
        f"req/s ({fmt_rate(one['pomona'].requests_per_s)} vs {fmt_rate(ml_one.requests_per_s)}); "
        f"p99 {_ratio(ml_one.p99_ms, one['pomona'].p99_ms)} lower "
        f"({one['pomona'].p99_ms:.2f} vs {ml_one.p99_ms:.2f} ms)"
    )
    print(
        f"  1000-row JSON, c=8:    {_ratio(rows, ml_rows)} rows/s "
        f"({fmt_rate(rows)} vs {fmt_rate(ml_rows)})"
    )
    binary_rows = binary["pomona"].rows_per_s(ROWS_LARGE)
    print(
        f"  1000-row binary, c=8:  {_ratio(binary_rows, ml_rows)} MLServer's JSON rows/s "
        f"({fmt_rate(binary_rows)})"
    )
    ml_binary = binary.get("mlserver")
    if ml_binary is None:
        print("    MLServer binary: n/a (it does not implement the binary tensor data extension)")
    else:
        print(f"    vs MLServer binary:  {_ratio(binary_rows, ml_binary.rows_per_s(ROWS_LARGE))}")
    share = ml_one.requests_per_s / _ceiling(results, "1row_c32")
    print(f"  MLServer reaches {share:.0%} of the same-run ceiling at 1 row")


def _targets(results: Results, *, judged: bool, with_peers: bool) -> None:
    one, js = results["1row_c32"], results["json1000_c8"]
    binary = results["binary1000_c8"]["pomona"]
    targets = [
        (
            "binary faster than JSON at 1000 rows",
            binary.requests_per_s > js["pomona"].requests_per_s,
        ),
    ]
    if with_peers:
        ml_one, ml_js = one["mlserver"], js["mlserver"]
        targets[:0] = [
            (
                ">= 5x MLServer req/s at 1 row, c=32",
                one["pomona"].requests_per_s >= 5 * ml_one.requests_per_s,
            ),
            ("p99 <= 1/5 of MLServer's at 1 row, c=32", one["pomona"].p99_ms <= ml_one.p99_ms / 5),
            (
                ">= 3x MLServer rows/s, 1000-row JSON, c=8",
                js["pomona"].requests_per_s >= 3 * ml_js.requests_per_s,
            ),
        ]
    print(f"targets ({'same-run MLServer and ' if with_peers else ''}pomona's own figures):")
    for text, met in targets:
        verdict = ("met" if met else "MISSED") if judged else "not judged: requests failed"
        print(f"  [{verdict}] {text}")
