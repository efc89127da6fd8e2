"""lm-evaluation-harness on the FTC-alpha model: a local multiple-choice task, offline."""

import copy
import json

import pytest
import torch
from conftest import make_pair

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is part of the dev extra")

from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from tuco.blocks import find_blocks  # noqa: E402
from tuco.harness import SteeredLM  # noqa: E402


def local_task(root, items: int = 5) -> TaskManager:
    """A local multiple-choice task (``tuco_local_mc``) of ``items`` yes/no questions, in ``root``."""
    rows = [{"question": f"Is {i} even?", "choices": ["yes", "no"], "answer": i % 2} for i in range(items)]
    (root / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "tuco_local_mc.yaml").write_text(
        "task: tuco_local_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {root / 'items.jsonl'}\ntest_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{question}}\\nAnswer:"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: answer\n'
        "metric_list:\n  - metric: acc\n"
    )
    return TaskManager(include_path=str(root))


@pytest.fixture(scope="module")
def task_manager(tmp_path_factory):
    return local_task(tmp_path_factory.mktemp("task"))


def loglikelihoods(lm, task_manager) -> list[float]:
    result = lm_eval.simple_evaluate(
        model=lm, tasks=["tuco_local_mc"], task_manager=task_manager, log_samples=True
    )
    assert 0 <= result["results"]["tuco_local_mc"]["acc,none"] <= 1
    return [ll for s in result["samples"]["tuco_local_mc"] for ((ll, _),) in s["resps"]]


def test_steered_lm_matches_the_models_it_stands_for(task_manager, tok):
    pair = make_pair("llama", tok)
    plain = loglikelihoods(HFLM(pretrained=pair.finetuned, tokenizer=tok, batch_size=4), task_manager)
    assert (
        loglikelihoods(SteeredLM(pair, 1.0, batch_size=4), task_manager) == plain
    )  # alpha = 1: the FT model
    # alpha = 0: every block adds PTC only, i.e. the FT model with its blocks swapped for the PT blocks
    hybrid = copy.deepcopy(pair.finetuned)
    blocks = find_blocks(hybrid)
    for i, block in enumerate(find_blocks(pair.pretrained)):
        blocks[i] = copy.deepcopy(block)
    expected = loglikelihoods(HFLM(pretrained=hybrid, tokenizer=tok, batch_size=4), task_manager)
    steered = loglikelihoods(SteeredLM(pair, 0.0, batch_size=4), task_manager)
    assert steered == pytest.approx(expected, abs=1e-4) and steered != pytest.approx(plain, abs=1e-3)
    assert torch.is_grad_enabled()  # the harness run left no global state behind
