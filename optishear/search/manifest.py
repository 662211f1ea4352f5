"""The run manifest (``manifest.json``): everything a trial depends on, written before the first trial.

Model identity (config digest, weights fingerprint), tokenizer (vocabulary digest), every window set (its
offsets in the text and a digest of its tokens), the calibration text's digest, the gradient statistics when the
search reads G (their cache key and a digest of their values), the configuration (plan included), the executor and
the library versions. A resume compares the new run's manifest with the one on
disk and refuses any difference in model, tokenizer, data or configuration, naming what differs; other
versions only warn (the trials were computed with them, and say so).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..data import WindowSet, source_digest
from ..models import model_identity, tokenizer_identity
from ..recipe import versions, write_json_atomic
from .stages import stage_count

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
FORMAT = "optishear-search-manifest/1"
# Configuration fields that cannot change any trial's result: a resume may change them.
RESUMABLE_CHANGES = ("max_failures",)
# Configuration fields added after runs were made without them, with the value that reproduces those runs: a manifest
# without the field compares as that value (a field whose default changed the behaviour is not listed: it differs).
ADDED_LATER = {"tree_init_mutants": 0.0, "tree_survival": "generational", "tree_seeds": [], "tree_screen": 0,
               "tree_rates": []}


def extendable(space: str) -> bool:
    """Whether a resume may raise ``generations``: yes for a one-stage space, as no optimizer's first g generations
    depend on how many follow (pymoo's n_gen termination, the GP's and the evolution's generation count), so the
    longer run replays the shorter one's trials first; no for a two-stage space, whose second stage starts from the
    first stage's end, which a longer first stage moves."""
    return stage_count(space) == 1


def build_manifest(model, tokenizer, config, windows: dict[str, WindowSet], *, executor: dict | None = None) -> dict:
    cfg = config.to_dict()
    return {
        "format": FORMAT,
        "model": model_identity(model),
        "tokenizer": tokenizer_identity(tokenizer),
        "data": {"source": config.plan.calib, "source_digest": source_digest(config.plan.calib),
                 "windows": {name: ws.describe() for name, ws in windows.items()}},  # fmt: skip
        "config": cfg,
        "executor": executor or {"kind": "local", "workers": 1},
        "versions": versions(),
    }


def _diff(old, new, path: str, out: list[str]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            _diff(old.get(k), new.get(k), f"{path}.{k}" if path else k, out)
    elif old != new:
        show = lambda v: json.dumps(v)[:120]  # noqa: E731
        out.append(f"{path}: {show(old)} -> {show(new)}")


def manifest_differences(old: dict, new: dict) -> list[str]:
    """What differs between two manifests in model, tokenizer, data and configuration (one line each)."""
    out: list[str] = []
    for section in ("model", "tokenizer", "data", "gradients"):
        _diff(old.get(section), new.get(section), section, out)
    oc = {k: v for k, v in {**ADDED_LATER, **(old.get("config") or {})}.items() if k not in RESUMABLE_CHANGES}
    nc = {k: v for k, v in (new.get("config") or {}).items() if k not in RESUMABLE_CHANGES}
    og, ng = oc.get("generations"), nc.get("generations")
    if isinstance(og, int) and isinstance(ng, int) and ng != og:
        if ng < og or not extendable(nc.get("space")):  # else an extension: the run's trials come first in the longer
            why = ("a resume may add generations, not remove them" if ng < og else
                   f"the two-stage space {nc.get('space')!r} cannot be extended: its second stage starts from the "
                   "first stage's end")  # fmt: skip
            out.append(f"config.generations: {og} -> {ng} ({why})")
        nc = {**nc, "generations": og}  # compared once, above
    _diff(oc, nc, "config", out)
    return out


def _refusal(out: Path, diffs: list[str]) -> ValueError:
    return ValueError(f"--resume: the run in {out} was made with a different model, data or configuration "
                      "(a different configuration cannot reuse its trials):\n  " + "\n  ".join(diffs))  # fmt: skip


def check_early(out: Path, manifest: dict) -> None:
    """A resume's check of what is known before any expensive pass (the sections ``manifest`` has so far): a run made
    with another model, data or configuration is refused before its gradient statistics would be computed."""
    path = out / MANIFEST_NAME
    if path.is_file():
        old = json.loads(path.read_text())
        diffs = [d for d in manifest_differences(old, manifest) if d.split(".", 1)[0].split(":", 1)[0] in manifest]
        if diffs:
            raise _refusal(out, diffs)


def check_or_write(out: Path, manifest: dict, resume: bool, has_trials: bool) -> None:
    """Write the manifest of a new run, or check a resumed run's against it.

    Raises:
        FileExistsError: ``out`` holds a search and ``resume`` is off.
        ValueError: a resume with another model, tokenizer, data or configuration (every difference named).
    """
    path = out / MANIFEST_NAME
    if not resume:
        if has_trials:
            raise FileExistsError(f"{out} holds a search already: pass resume=True (--resume) or another directory")
        write_json_atomic(path, manifest)
        return
    if not path.is_file():
        if has_trials:
            raise ValueError(f"--resume: {out} has trials but no {MANIFEST_NAME} (written by an older version?): "
                             "it cannot be checked, start a new run")  # fmt: skip
        write_json_atomic(path, manifest)
        return
    old = json.loads(path.read_text())
    diffs = manifest_differences(old, manifest)
    if diffs:
        raise _refusal(out, diffs)
    vdiff: list[str] = []
    _diff(old.get("versions"), manifest.get("versions"), "versions", vdiff)
    if vdiff:
        logger.warning("resuming with other library versions than the run started with: %s", "; ".join(vdiff))
    if old.get("config") != manifest.get("config"):  # a resumable change (max_failures, more generations)
        write_json_atomic(path, {**old, "config": manifest["config"]})


def record_executor(out: Path, described: dict) -> None:
    """Record the executor this session runs its trials on (not compared on resume: a log written by one executor
    resumes with any other; the manifest says which ran last)."""
    path = out / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    if manifest.get("executor") != described:
        write_json_atomic(path, {**manifest, "executor": described})


__all__ = ["build_manifest", "manifest_differences", "check_early", "check_or_write", "record_executor",
           "MANIFEST_NAME"]
