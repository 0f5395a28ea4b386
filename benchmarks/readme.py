"""README blocks that benchmark scripts own: ``<!-- name:start -->`` ... ``<!-- name:end -->``."""
from __future__ import annotations

import os
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def update_readme(table: str, marker: str) -> bool:
    """Replace README's ``marker`` block with ``table`` (atomically); False when README lacks the block."""
    text = README.read_text(encoding="utf-8")
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    if start not in text or end not in text:
        print(f"README.md has no {start} ... {end} block; table not inserted", file=sys.stderr)
        return False
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    staging = README.with_name(f".{README.name}.tmp")
    staging.write_text(f"{head}{start}\n{table}\n{end}{tail}", encoding="utf-8")
    os.replace(staging, README)
    return True
