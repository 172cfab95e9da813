"""Markdown tables for the benchmarks' printed results."""
from __future__ import annotations


def print_table(rows: list[dict], digits: int = 1) -> None:
    """One markdown table: the dicts' keys are the columns (floats with ``digits`` decimals), then a blank line."""
    columns = list(rows[0])
    cells = [[f"{r[c]:.{digits}f}" if isinstance(r[c], float) else str(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |")
    print()
