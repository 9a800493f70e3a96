"""`ens data fetch`: get a public dataset and write its open-set manifests (train / query / index).

grocery: GroceryStoreDataset (Klasson et al., WACV 2019, MIT). 41 classes are for training (all their
photos and iconic images); the other 40 are the eval classes: their `test` photos are queries, their
`train`/`val` photos and iconic images the index. This is the split of `../shared/data/grocery`.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import shutil
import urllib.request
import zipfile
from pathlib import Path

from ..atomic import atomic_file, atomic_write_text
from ..errors import EnsError

log = logging.getLogger("ensemble")

GROCERY_COMMIT = "fc80ba90f803d79d0383df52c5a4ac5de99ff6fc"
GROCERY_URL = f"https://github.com/marcusklasson/GroceryStoreDataset/archive/{GROCERY_COMMIT}.zip"
GROCERY_EVAL_CLASSES = frozenset("""
Alpro-Fresh-Soy-Milk Alpro-Vanilla-Soyghurt Arla-Ecological-Sour-Cream Arla-Medium-Fat-Milk
Arla-Natural-Mild-Low-Fat-Yoghurt Arla-Sour-Cream Arla-Standard-Milk Aubergine Avocado Bravo-Orange-Juice
Brown-Cap-Mushroom Cantaloupe Carrots Floury-Potato Galia-Melon Garant-Ecological-Standard-Milk Ginger
God-Morgon-Orange-Juice God-Morgon-Red-Grapefruit-Juice Granny-Smith Kaiser Leek Lemon Mango Oatly-Oat-Milk
Orange Passion-Fruit Pineapple Plum Red-Beet Red-Delicious Regular-Tomato Royal-Gala Sweet-Potato
Tropicana-Golden-Grapefruit Tropicana-Mandarin-Morning Watermelon Yellow-Bell-Pepper Yoggi-Strawberry-Yoghurt
Zucchini""".split())
ICONIC = "iconic-images-and-descriptions"


def grocery_rows(root: Path) -> dict[str, list[dict]]:
    """Manifest rows for the extracted `images/dataset` tree under `root` (paths relative to root)."""
    dataset = root / "images" / "dataset"
    if not dataset.is_dir():
        raise EnsError(f"{dataset}: not found (expected the GroceryStoreDataset `dataset/` folder)")
    splits: dict[str, list[dict]] = {"train": [], "query": [], "index": []}
    for path in sorted(dataset.rglob("*.jpg")):
        rel = path.relative_to(dataset).parts  # (split, Group, coarse, [fine,] file)
        if len(rel) < 4 or rel[0] not in ("train", "val", "test", ICONIC):
            continue
        label, domain = rel[-2], rel[1].lower()
        row = {"path": str(path.relative_to(root)), "label": label, "domain": domain}
        if label not in GROCERY_EVAL_CLASSES:
            splits["train"].append(row)
        else:
            splits["query" if rel[0] == "test" else "index"].append(row)
    if not all(splits.values()):
        raise EnsError(f"{dataset}: no images for split(s) {[k for k, v in splits.items() if not v]}")
    return splits


def write_manifests(root: Path, splits: dict[str, list[dict]]) -> None:
    for name, rows in splits.items():
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["path", "label", "domain"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(root / f"{name}.csv", buffer.getvalue())


def download_grocery(dest: Path, url: str = GROCERY_URL) -> None:
    """Download the pinned GitHub archive and extract `dataset/` and `LICENSE` into dest/images."""
    log.warning("downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            data = response.read()
    except OSError as exc:
        raise EnsError(f"cannot download {url}: {exc} (no internet? copy the dataset to {dest} yourself)") from None
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        prefix = archive.namelist()[0].split("/")[0] + "/"
        for member in archive.namelist():
            rel = member[len(prefix):]
            if not rel.startswith(("dataset/", "LICENSE")) or member.endswith("/"):
                continue
            target = dest / "images" / rel if rel.startswith("dataset/") else dest / rel
            with archive.open(member) as src, atomic_file(target, archive.getinfo(member).file_size) as out:
                shutil.copyfileobj(src, out)


def fetch(name: str, dest: str | Path, shared: str | Path, data_config: str | Path) -> Path:
    """Make `name` available; returns the folder with train/query/index.csv.

    With `shared` present it is used as is. Otherwise the data is downloaded to `dest`, its manifests
    written, and `data_config` pointed at them.
    """
    if name != "grocery":
        raise EnsError(f"ens data fetch {name}: unknown dataset; known: grocery")
    shared = Path(shared)
    if (shared / "train.csv").is_file():
        return shared
    dest = Path(dest)
    if not (dest / "images" / "dataset").is_dir():
        download_grocery(dest)
    write_manifests(dest, grocery_rows(dest))
    rel = Path(os.path.relpath(dest.resolve(), Path(data_config).resolve().parent))
    atomic_write_text(Path(data_config), "# written by `ens data fetch grocery`\n"
                      + "".join(f"{k}: {rel / f'{k}.csv'}\n" for k in ("train", "query", "index")))
    return dest
