"""A stored ``{text: text}`` JSON map (room -> owner, room -> problem, ...) read back;
a damaged value counts as none."""

from __future__ import annotations

import json


def load_text_map(raw: str | None) -> dict[str, str]:
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}
