"""The Python blocks of the README and of docs/ run as written, so the documented flow is
the tested flow. A block that needs names defined first has a *Given* fold right before it
(``<details><summary>Given…</summary>`` around a Python block); the test runs that fold and
the block in a fresh namespace and defines nothing itself, so a reader who pastes both gets
what the test got."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

import pacnet

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PYTHON = re.compile(r"```python\n(.*?)```", re.S)
GIVEN = re.compile(
    r"<details><summary>Given\b.*?</summary>\s*```python\n(.*?)```\s*</details>", re.S
)


def blocks(text: str) -> list[tuple[str | None, str]]:
    """The page's Python blocks that are not *Given* folds, each with the fold right before
    it (None if there is none)."""
    folds = {m.start(1): m.group(1) for m in GIVEN.finditer(text)}
    out, given = [], None
    for match in PYTHON.finditer(text):
        if match.start(1) in folds:
            given = folds[match.start(1)]
        else:
            out.append((given, match.group(1)))
            given = None
    return out


BLOCKS = [
    (page, i, given, block)
    for page in PAGES
    for i, (given, block) in enumerate(blocks(page.read_text()))
]


def batchnorm_counts(namespace: dict) -> dict[str, dict[str, int]]:
    """Per task of the block's ``tasks``, the batches each BatchNorm layer of its network
    (``net`` or ``model``) has counted: a task trained in train mode counts more than the
    source it started from."""
    tasks, model = namespace.get("tasks"), namespace.get("net", namespace.get("model"))
    if not isinstance(tasks, pacnet.Tasks) or not isinstance(model, nn.Module):
        return {}
    counts = {}
    for task in tasks.order:
        with tasks.use(model, task):
            counts[task] = {
                name: int(m.num_batches_tracked)
                for name, m in model.named_modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm)
            }
    return counts


def test_the_pages_have_python_blocks():
    assert len(BLOCKS) >= 6
    assert {page.name for page, _, _, _ in BLOCKS} >= {
        "README.md", "own-model.md", "huggingface.md", "lightning.md", "several-targets.md",
    }  # fmt: skip
    given = {page.name for page, _, fold, _ in BLOCKS if fold is not None}
    assert given >= {"README.md", "own-model.md", "huggingface.md", "lightning.md"}


def test_a_given_fold_is_found_and_paired_with_the_next_block():
    text = (
        "<details><summary>Given: x</summary>\n\n```python\nx = 1\n```\n\n</details>\n\n"
        "```python\nprint(x)\n```\n\n```python\nprint(2)\n```\n"
    )
    assert blocks(text) == [("x = 1\n", "print(x)\n"), (None, "print(2)\n")]


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    "page,index,given,block", BLOCKS, ids=[f"{p.name}-{i}" for p, i, _, _ in BLOCKS]
)
def test_block_runs_as_written(page, index, given, block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace: dict = {"__name__": "__main__"}  # what a fresh interpreter has
    if given is not None:
        exec(compile(given, f"{page.name} block {index + 1}, given", "exec"), namespace)
    exec(compile(block, f"{page.name} python block {index + 1}", "exec"), namespace)
    # every target trained its BatchNorm statistics (in train mode) beyond the source's
    counts = batchnorm_counts(namespace)
    for task, layers in counts.items():
        for name, count in layers.items():
            assert task == "source" or count > counts["source"][name], (task, name)
    if page.name == "lightning.md":
        assert counts and counts["source"]  # the check above did apply
