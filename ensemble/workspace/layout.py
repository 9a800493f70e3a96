"""The `runs/` tree: where every artifact of a workspace lives (names kept stable across versions).

    runs/members/<name>/    best.pt, last.pt, config.yaml, metrics.jsonl, eval.json, failed_images.json
    runs/students/<name>/   the same, plus targets.npy / targets.json (the teacher's embeddings)
    runs/ensemble/<name>/   ensemble.yaml, reducer.npz
    runs/cache/<model>/     embeddings per model, manifest and TTA
    runs/cache/_neck_init/  least-squares neck fits of students (no model name starts with _)
    runs/reports/           ens eval / ens pipeline reports
    runs/exports/           exported files written by `ens pipeline`
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import EnsError

MODEL_FILE = "best.pt"
LAST_FILE = "last.pt"
ENSEMBLE_FILE = "ensemble.yaml"
REDUCER_FILE = "reducer.npz"


@dataclass(frozen=True)
class Workspace:
    """A workspace folder (`--workdir`, default `runs`) and the paths inside it."""

    root: Path

    @classmethod
    def at(cls, root: str | Path | Workspace) -> Workspace:
        return root if isinstance(root, Workspace) else cls(Path(root))

    def member_dir(self, name: str) -> Path:
        return self.root / "members" / name

    def student_dir(self, name: str) -> Path:
        return self.root / "students" / name

    def ensemble_dir(self, name: str) -> Path:
        return self.root / "ensemble" / name

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def exports_dir(self) -> Path:
        return self.root / "exports"

    def trained_members(self) -> list[str]:
        """Names of the members that have a model file."""
        found = sorted(p.parent.name for p in (self.root / "members").glob(f"*/{MODEL_FILE}"))
        if not found:
            raise EnsError(f"no trained members in {self.root}/members (run `ens train-member` first)")
        return found

    def newest_ensemble(self) -> str:
        """The most recently fitted ensemble's name."""
        found = sorted((p.stat().st_mtime, p.parent.name) for p in (self.root / "ensemble").glob(f"*/{ENSEMBLE_FILE}"))
        if not found:
            raise EnsError(f"no ensemble in {self.root}/ensemble (run `ens fuse` first)")
        return found[-1][1]
