"""Trial records and the trial log (``trials.jsonl``): one JSON line per trial, flushed as it finishes.

The driver is the log's single writer; runners and executors return records. A line cut short by a kill is
ignored when the log is read back, and that trial simply runs again on resume.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass
class TrialRecord:
    """One trial.

    Attributes:
        stage, key, generation: where it was proposed (``key`` identifies the genotype within the run).
        metric, block_sparsity: what it pruned with (the plan changes the space decoded).
        sparsity: achieved sparsity; objective: its reconstruction error (None when it failed).
        mask_hash: digest of its masks (identical digests share one evaluation).
        evaluated: whether this trial pruned and measured (False: answered from an identical earlier mask).
        seconds: wall time of the trial.
        status: ``ok`` or ``failed``; error: the failure's message.
        changes: the plan changes the space decoded (what ``TrialRunner.plan_for`` rebuilds the plan from).
        extra: anything else a space or method wants on record.
    """

    stage: str
    key: str
    generation: int
    metric: str
    block_sparsity: list[float]
    sparsity: float | None = None
    objective: float | None = None
    mask_hash: str | None = None
    evaluated: bool = False
    seconds: float = 0.0
    status: str = "ok"
    error: str | None = None
    changes: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrialRecord":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def read_jsonl(path: Path) -> list[dict]:
    """Every complete JSON line of ``path`` (none if it does not exist); cut lines are skipped with a warning."""
    if not path.is_file():
        return []
    return jsonl_records(path.read_text(), path)


def jsonl_records(text: str, path) -> list[dict]:
    """The records of JSON-lines ``text`` read from ``path``: blank lines skipped, and lines cut by a kill skipped
    with a warning naming ``path`` (that trial is simply run again)."""
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            logger.warning("ignoring a truncated line in %s", path)
    return out


class TrialLog:
    """Append-only JSONL log of trial records, flushed line by line."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._f = None

    def read(self) -> list[TrialRecord]:
        return [TrialRecord.from_dict(d) for d in read_jsonl(self.path)]

    def __enter__(self) -> "TrialLog":
        _end_line(self.path)
        self._f = self.path.open("a")
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()
        self._f = None

    def write(self, record: TrialRecord) -> None:
        self._f.write(json.dumps(record.to_dict()) + "\n")
        self._f.flush()


def _end_line(path: Path) -> None:
    """Terminate a line cut short by a kill, so that the next record starts on a line of its own."""
    if path.is_file() and path.stat().st_size:
        with path.open("rb") as f:
            f.seek(-1, 2)
            last = f.read(1)
        if last != b"\n":
            with path.open("a") as f:
                f.write("\n")


def append_jsonl(path: Path, obj: dict) -> None:
    _end_line(Path(path))
    with Path(path).open("a") as f:
        f.write(json.dumps(obj) + "\n")
        f.flush()


__all__ = ["TrialRecord", "TrialLog", "read_jsonl", "jsonl_records", "append_jsonl"]
