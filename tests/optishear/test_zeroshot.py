"""Zero-shot evaluation through lm-eval on local task files: a few documents of real task data, a tiny model."""

import json
import os

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from optishear.cli import main  # noqa: E402
from optishear.objectives.zeroshot import TASK_FILES, TASKS, task_config, task_files, zero_shot  # noqa: E402

from ..conftest import SHARED  # noqa: E402

ZS = SHARED / "data" / "zero-shot"
pytest.importorskip("lm_eval")


def _need_data():
    if not (ZS / "arc_easy" / "arc_easy.jsonl").is_file():
        pytest.skip(f"zero-shot data not found at {ZS}")


def test_every_task_has_a_local_file_and_a_stock_config():
    _need_data()
    files = task_files(TASKS, ZS)
    assert set(files) == set(TASKS)
    for t, path in files.items():
        cfg = task_config(t, path)
        assert cfg["task"] == t and "tag" not in cfg and cfg["training_split"] is None
        assert str(path) in json.dumps(cfg["dataset_kwargs"])


def test_local_prompts_render_the_stock_text():
    """ARC's local query already holds "Question: ...": the local template gives lm-eval's stock prompt."""
    _need_data()
    from lm_eval.api.task import ConfigurableTask

    arc = ConfigurableTask(config=task_config("arc_easy", ZS / TASK_FILES["arc_easy"][3]))
    doc = next(iter(arc.test_docs()))
    text = arc.doc_to_text(doc)
    assert text.startswith("Question: ") and text.endswith("\nAnswer:") and "{{" not in text
    assert arc.doc_to_target(doc) == doc["gold"] and len(arc.doc_to_choice(doc)) == 4
    hs = ConfigurableTask(config=task_config("hellaswag", ZS / TASK_FILES["hellaswag"][3]))
    doc = next(iter(hs.validation_docs()))
    assert set(doc) >= {"query", "choices", "gold"}  # lm-eval's own process_docs ran on the local copy
    boolq = ConfigurableTask(config=task_config("boolq", ZS / TASK_FILES["boolq"][3]))
    doc = next(iter(boolq.validation_docs()))
    assert boolq.doc_to_target(doc) == int(doc["answer"])


@pytest.mark.slow
def test_a_few_documents_equal_lm_evals_own_run_of_the_same_yaml(tiny_model_dir, tmp_path):
    """Ours (in-memory model, stock config pointed at the local file) against lm-eval run as its CLI does (a model
    path, a task YAML from an include path, as the shared README writes it) on the same 4 documents."""
    _need_data()
    import lm_eval
    from lm_eval.tasks import TaskManager
    from optishear.models import load_model

    model, tok = load_model(str(tiny_model_dir))
    ours = zero_shot(model, tok, ["arc_easy", "piqa"], ZS, limit=4, batch_size=2, progress=False)
    (tmp_path / "arc_easy_local.yaml").write_text(
        "task: arc_easy_local\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {ZS / 'arc_easy' / 'arc_easy.jsonl'}\n"
        "output_type: multiple_choice\ntest_split: test\ndoc_to_text: \"{{query}}\\nAnswer:\"\n"
        "doc_to_choice: choices\ndoc_to_target: gold\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    (tmp_path / "piqa_local.yaml").write_text(
        "task: piqa_local\ndataset_path: arrow\n"
        f"dataset_kwargs:\n  data_files:\n    validation: {ZS / TASK_FILES['piqa'][3]}\n"
        "output_type: multiple_choice\ntraining_split: null\nvalidation_split: validation\ntest_split: null\n"
        "doc_to_text: \"Question: {{goal}}\\nAnswer:\"\ndoc_to_target: label\ndoc_to_choice: \"{{[sol1, sol2]}}\"\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    theirs = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={tiny_model_dir},dtype=float32",
                                     tasks=["arc_easy_local", "piqa_local"], limit=4, batch_size=2, device="cpu",
                                     task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
                                     log_samples=False, bootstrap_iters=0)  # fmt: skip
    for t in ("arc_easy", "piqa"):
        r = theirs["results"][f"{t}_local"]
        assert ours["tasks"][t]["n"] == 4
        assert ours["tasks"][t]["acc"] == pytest.approx(r["acc,none"])
        assert ours["tasks"][t]["acc_norm"] == pytest.approx(r["acc_norm,none"])
    norms = [ours["tasks"][t]["acc_norm"] for t in ("arc_easy", "piqa")]
    assert ours["mean"] == pytest.approx(sum(norms) / 2)


@pytest.mark.slow
def test_cli_eval_writes_json_beside_the_model(tiny_model_dir, capsys):
    _need_data()
    rc = main(["eval", "--model", str(tiny_model_dir), "--tasks", "rte,lambada_openai", "--tasks-data", str(ZS),
               "--limit", "3", "--batch-size", "2", "--json", "--quiet"])  # fmt: skip
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    saved = json.loads((tiny_model_dir / "optishear_zeroshot.json").read_text())
    assert saved["tasks"].keys() == {"rte", "lambada_openai"} and saved["limit"] == 3
    assert out["zeroshot_mean"] == pytest.approx(saved["mean"], abs=1e-4)
    assert "perplexity" in saved["tasks"]["lambada_openai"]


def test_bad_input_unknown_task_missing_file_no_output(tmp_path, capsys):
    _need_data()
    out = tmp_path / "res.json"
    rc = main(["eval", "--tasks", "boolq,mmlu", "--tasks-data", str(ZS), "--out", str(out)])
    assert rc == 2 and "unknown zero-shot task" in capsys.readouterr().err and not out.exists()
    (tmp_path / "data" / "arc_easy").mkdir(parents=True)
    rc = main(["eval", "--tasks", "arc_easy", "--tasks-data", str(tmp_path / "data"), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "arc_easy" in err and "missing" in err and not out.exists()
    rc = main(["eval", "--tasks", "arc_easy", "--out", str(out)])
    assert rc == 2 and "--tasks-data" in capsys.readouterr().err
    with pytest.raises(ValueError, match="limit"):
        zero_shot(None, None, ["rte"], ZS, limit=0)
