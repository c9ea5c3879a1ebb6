"""The report: per-request outcomes -> one table row (n, p50/p95/p99/mean/min/max ms, errors, lost,
answered requests/s), and the rows as the printed table."""

from __future__ import annotations

import numpy as np


def summarise(latencies_s: list[float]) -> dict:
    """n and the p50/p95/p99/mean/min/max of latencies given in seconds, in ms (0.1 ms)."""
    keys = ("p50_ms", "p95_ms", "p99_ms", "mean_ms", "min_ms", "max_ms")
    if not latencies_s:
        return {"n": 0, **dict.fromkeys(keys)}
    ms = np.asarray(latencies_s, dtype=float) * 1000.0
    values = [*np.percentile(ms, [50, 95, 99]), ms.mean(), ms.min(), ms.max()]
    return {"n": len(ms), **{k: round(float(v), 1) for k, v in zip(keys, values)}}


def make_row(target: str, method: str, clients: int, requests: int, outcomes: list[dict], wall: float,
             not_run: int = 0, **extra) -> dict:
    """One table row from per-request outcomes ({'ok', 'lost', 'error', 'seconds'}); ``not_run``
    requests were never sent (the browser gives up after two failures in a row): not lost."""
    total = clients * requests - not_run
    answered = [o for o in outcomes if o["ok"]]
    errors = [o for o in outcomes if not o["ok"] and not o.get("lost")]
    lost = sum(1 for o in outcomes if o.get("lost")) + max(0, total - len(outcomes))  # never accounted for
    return {
        "target": target, "method": method, "clients": clients, "requests_per_client": requests,
        "total": total, **summarise([o["seconds"] for o in answered]),
        "errors": len(errors), "lost": lost,
        "requests_per_s": round(len(answered) / wall, 2) if wall > 0 else None,
        "wall_s": round(wall, 3),
        **({"not_run": not_run} if not_run else {}),
        "error_samples": sorted({o["error"] for o in outcomes if o.get("error")})[:5],
        **extra,
    }


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


def print_table(rows: list[dict]) -> None:
    head = f"{'target':<10} {'method':<52} {'c x r':>7} {'n':>4} {'p50':>7} {'p95':>7} {'p99':>7} " \
           f"{'mean':>7} {'err':>4} {'lost':>4} {'req/s':>7}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['target']:<10} {r['method'][:52]:<52} {str(r['clients']) + 'x' + str(r['requests_per_client']):>7} "
              f"{r['n']:>4} {_ms(r['p50_ms']):>7} {_ms(r['p95_ms']):>7} {_ms(r['p99_ms']):>7} {_ms(r['mean_ms']):>7} "
              f"{r['errors']:>4} {r['lost']:>4} {'-' if r['requests_per_s'] is None else r['requests_per_s']:>7}")
    print("latencies in ms; req/s: answered requests per second of the row's wall time")
