"""Write one benchmark's section of benchmarks/RESULTS.md (between its start/end markers)."""

from __future__ import annotations

from pathlib import Path

from saelab.io import write_text_atomic

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def write_section(name: str, text: str) -> None:
    """Replace (or append) the section ``<!-- name:start -->`` ... ``<!-- name:end -->``, atomically."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    old = RESULTS.read_text("utf-8") if RESULTS.exists() else "# saelab benchmark results\n"
    block = f"{start}\n{text.rstrip()}\n{end}"
    if start in old and end in old:
        head, rest = old.split(start, 1)
        new = head + block + rest.split(end, 1)[1]
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    write_text_atomic(RESULTS, new)
