"""`ens search INDEX IMAGE...`: the nearest gallery images of each query image."""

from __future__ import annotations

import json

from ..gallery.build import search_gallery


def run(index, images, k, spec, as_json, workdir) -> str:
    results = search_gallery(index, workdir, list(images), k, spec)
    if as_json:
        return json.dumps(results, indent=2)
    lines = []
    for r in results:
        lines.append(f"{r['query']}:")
        lines += [f"  {i + 1:>2}. {n['distance']:.4f}  {n['path']}" + (f"  [{n['label']}]" if n["label"] else "")
                  for i, n in enumerate(r["neighbours"])]
    return "\n".join(lines)
