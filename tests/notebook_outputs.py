"""What a reader must never see on a page: the tracebacks and warnings among an executed notebook's outputs."""

from __future__ import annotations

import json
from pathlib import Path


def problems(executed: Path) -> list[str]:
    """Error outputs and printed warnings of an executed notebook, each named by its cell."""
    found = []
    for i, cell in enumerate(json.loads(Path(executed).read_text())["cells"]):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                found.append(f"cell {i}: {out.get('ename')}: {out.get('evalue')}")
            # tqdm's TqdmWarning is printed when a library imports tqdm.auto without ipywidgets: not a drawing
            elif out.get("name") == "stderr" and "Warning" in "".join(out.get("text", "")).replace(
                "TqdmWarning", ""
            ):
                found.append(f"cell {i}: {''.join(out['text']).strip()[:300]}")
    return found
