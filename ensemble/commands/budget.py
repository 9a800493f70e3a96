"""`ens budget`: FLOPs per image, speed here, and whether MODEL fits the competition's time budget."""

from __future__ import annotations

import json

from ..budget import DEFAULT_UTILIZATION, budget, format_budget


def run(spec, workdir, images, hours, gpus, utilization, measure, recipes, as_json) -> str:
    utilization = DEFAULT_UTILIZATION if utilization is None else utilization  # 0 is refused, not defaulted
    result = budget(spec, workdir, images, hours, utilization, measure, recipes)
    if gpus:
        for key in ("projected_hours", "fits"):
            result[key] = {g: v for g, v in result[key].items() if g in gpus}
    return json.dumps(result, indent=2) if as_json else format_budget(result)
