"""Zero-shot accuracy through lm-evaluation-harness's Python API, on local copies of the task data.

Each task is lm-eval's own stock task (its YAML from the installed package: prompt, choices, target, metrics,
``process_docs``), with only the dataset lines pointed at a local file under ``--tasks-data DIR`` (the layout of
``shared/data/zero-shot/``, see ``TASK_FILES``). Where the local copy has other field names than the Hub's (ARC and
OpenBookQA in MosaicML's ``{query, choices, gold}`` form, BoolQ with ``answer`` in place of ``label``), the prompt
lines are the local equivalents that render the same text. The model is the one in memory (``HFLM(pretrained=model)``),
so a pruned model is evaluated without saving it. Nothing is downloaded: the Hugging Face libraries are put offline
before lm-eval is imported. Install with ``pip install optishear[eval]``.

Which number goes into the mean: ``acc_norm`` (length-normalised log-likelihood) for the tasks lm-eval reports it for
(hellaswag, piqa, arc_easy, arc_challenge, openbookqa), ``acc`` for the others (boolq, rte, winogrande,
lambada_openai): ``MEAN_METRIC``. Both are reported per task.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

logger = logging.getLogger(__name__)

TASKS = ("boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa", "piqa", "lambada_openai")

# task -> (stock YAML under lm_eval/tasks, dataset loader, split, local file relative to --tasks-data)
TASK_FILES = {
    "hellaswag": ("hellaswag/hellaswag.yaml", "arrow", "validation", "hellaswag/validation/data-00000-of-00001.arrow"),
    "boolq": ("super_glue/boolq/default.yaml", "arrow", "validation", "boolq/validation/data-00000-of-00001.arrow"),
    "rte": ("glue/rte/default.yaml", "arrow", "validation", "rte/validation/data-00000-of-00001.arrow"),
    "winogrande": ("winogrande/default.yaml", "arrow", "validation", "winogrande/validation/data-00000-of-00001.arrow"),
    "piqa": ("piqa/piqa.yaml", "arrow", "validation", "piqa/hf-validation/data-00000-of-00001.arrow"),
    "lambada_openai": ("lambada/lambada_openai.yaml", "json", "test", "lambada_openai/lambada_test.jsonl"),
    "arc_easy": ("arc/arc_easy.yaml", "json", "test", "arc_easy/arc_easy.jsonl"),
    "arc_challenge": ("arc/arc_challenge.yaml", "json", "test", "arc_challenge/arc_challenge.jsonl"),
    "openbookqa": ("openbookqa/openbookqa.yaml", "json", "test", "openbookqa/openbook_qa.jsonl"),
}

# Local field names differ from the Hub's: the same prompt text from the local fields (shared README).
_LOCAL_PROMPTS = {
    "boolq": {"doc_to_target": "{{ 1 if answer else 0 }}"},
    "arc_easy": {"doc_to_text": "{{query}}\nAnswer:", "doc_to_choice": "choices", "doc_to_target": "gold"},
    "arc_challenge": {"doc_to_text": "{{query}}\nAnswer:", "doc_to_choice": "choices", "doc_to_target": "gold"},
    "openbookqa": {"doc_to_text": "{{query}}", "doc_to_choice": "choices", "doc_to_target": "gold"},
}

MEAN_METRIC = {"hellaswag": "acc_norm", "piqa": "acc_norm", "arc_easy": "acc_norm", "arc_challenge": "acc_norm",
               "openbookqa": "acc_norm", "boolq": "acc", "rte": "acc", "winogrande": "acc",
               "lambada_openai": "acc"}  # fmt: skip


def _offline() -> None:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _import_lm_eval():
    _offline()
    try:
        import lm_eval  # noqa: F401
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ImportError("zero-shot evaluation needs lm-evaluation-harness: pip install 'optishear[eval]'") from err
    return lm_eval


def parse_tasks(tasks) -> list[str]:
    """``"boolq,rte"`` or a list -> task names, checked against ``TASKS``.

    Raises:
        ValueError: an unknown task (the message lists the known ones) or none.
    """
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t and t.strip()]
    if not names:
        raise ValueError(f"no zero-shot task given; known: {', '.join(TASKS)}")
    unknown = [t for t in names if t not in TASK_FILES]
    if unknown:
        raise ValueError(f"unknown zero-shot task(s) {unknown}: this evaluation knows {', '.join(TASKS)}")
    return list(dict.fromkeys(names))


def task_files(tasks, data_dir) -> dict[str, Path]:
    """The local data file of every task, checked to exist before anything is loaded.

    Raises:
        FileNotFoundError: the directory or a task's file is missing (naming it and the expected layout).
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"zero-shot data directory {root} does not exist")
    out = {}
    for t in parse_tasks(tasks):
        path = (root / TASK_FILES[t][3]).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"task {t}: data file {path} is missing (expected {TASK_FILES[t][3]} under "
                                    f"{root}, as in shared/data/zero-shot)")  # fmt: skip
        out[t] = path
    return out


def task_config(task: str, path: Path) -> dict:
    """lm-eval's stock config of ``task`` with its dataset pointed at the local file ``path``."""
    lm_eval = _import_lm_eval()
    from lm_eval.tasks._yaml_loader import load_yaml

    stock, loader, split, _ = TASK_FILES[task]
    cfg = load_yaml(Path(lm_eval.__file__).parent / "tasks" / stock, resolve_func=True)
    for key in ("tag", "group", "should_decontaminate", "doc_to_decontamination_query"):
        cfg.pop(key, None)
    cfg.update(task=task, dataset_path=loader, dataset_name=None,
               dataset_kwargs={"data_files": {split: str(path)}}, training_split=None,
               validation_split=split if split == "validation" else None,
               test_split=split if split == "test" else None, fewshot_split=None)  # fmt: skip
    cfg.update(_LOCAL_PROMPTS.get(task, {}))
    return cfg


def zero_shot(model, tokenizer, tasks=TASKS, data_dir=None, *, limit: int | None = None, batch_size: int = 8,
              progress: bool = True) -> dict:  # fmt: skip
    """Zero-shot accuracy of an in-memory model on local task files.

    Args:
        model: a Hugging Face causal LM (evaluated as it is, pruned or not).
        tasks: names from ``TASKS`` (a list or ``"boolq,rte"``).
        data_dir: the directory of task files (the layout of ``shared/data/zero-shot``).
        limit: the first ``limit`` documents of each task (None: all).
        batch_size: lm-eval's batch size.

    Returns:
        ``{"tasks": {task: {"acc", "acc_stderr", "acc_norm"?, "acc_norm_stderr"?, "perplexity"?, "n",
        "mean_metric"}}, "mean": mean over tasks of their ``MEAN_METRIC``, "mean_metric": MEAN_METRIC subset,
        "limit", "seconds", "lm_eval"}``.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer, got {limit!r}")
    files = task_files(tasks, data_dir)
    lm_eval = _import_lm_eval()
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    if not progress:
        logging.getLogger("lm_eval").setLevel(logging.WARNING)
    t0 = time.perf_counter()
    task_objs = [ConfigurableTask(config=task_config(t, p)) for t, p in files.items()]
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(next(model.parameters()).device))
    res = lm_eval.simple_evaluate(model=lm, tasks=task_objs, limit=limit, bootstrap_iters=1000, log_samples=False,
                                  random_seed=0, numpy_random_seed=1234, torch_random_seed=1234,
                                  fewshot_random_seed=1234,
                                  # the tasks are built here: indexing lm-eval's ~10k stock YAMLs takes minutes
                                  task_manager=TaskManager(include_defaults=False))  # fmt: skip
    out: dict[str, dict] = {}
    for t in files:
        r = res["results"][t]
        row = {}
        for key in ("acc", "acc_norm", "perplexity"):
            v = r.get(f"{key},none")
            if v is not None:
                row[key] = float(v)
                se = r.get(f"{key}_stderr,none")
                if isinstance(se, (int, float)) and math.isfinite(se):
                    row[f"{key}_stderr"] = float(se)
        row["n"] = int(res.get("n-samples", {}).get(t, {}).get("effective", 0))
        row["mean_metric"] = MEAN_METRIC[t]
        out[t] = row
    mean = sum(out[t][MEAN_METRIC[t]] for t in out) / len(out)
    logger.info("zero-shot mean %.4f over %s", mean, ", ".join(out))
    return {"tasks": out, "mean": mean, "mean_metric": {t: MEAN_METRIC[t] for t in out}, "limit": limit,
            "seconds": round(time.perf_counter() - t0, 1), "lm_eval": lm_eval.__version__}  # fmt: skip


__all__ = ["zero_shot", "TASKS", "TASK_FILES", "MEAN_METRIC", "parse_tasks", "task_files", "task_config"]
