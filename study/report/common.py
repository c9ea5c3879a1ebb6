"""What every part of the report shares: how numbers and tables are written."""

from __future__ import annotations


def md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def machine_text(m) -> str:
    if isinstance(m, dict):
        flags = f" ({', '.join(m['cpu_flags'])})" if m.get("cpu_flags") else ""
        return f"{m.get('cpu', '?')}{flags}, {m.get('cores', '?')} cores, torch {m.get('torch', '?')}"
    return str(m)


def first_epoch(curve: list[float], threshold: float) -> int | None:
    return next((i + 1 for i, v in enumerate(curve) if v >= threshold), None)
