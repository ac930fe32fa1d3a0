"""The shipped release: valid, loadable offline, and the card's copy-paste examples run against it."""

import json
import os
import re
from pathlib import Path

import pytest

from hwgpt_bench.loaders.validate import validate_release

REPO = Path(__file__).resolve().parents[1]
DATASET = REPO / "dataset"

pytestmark = pytest.mark.skipif(not (DATASET / "MANIFEST.json").exists(), reason="no shipped release")


def test_shipped_release_is_valid():
    assert validate_release(DATASET) == []


def test_shipped_readme_is_the_rendered_card():
    """The shipped card is the source rendered from the release's own tables, every number included."""
    from hwgpt_bench.loaders.card import render_card
    from hwgpt_bench.loaders.io import read_manifest, release_tables

    card = (REPO / "DATASET_CARD.md").read_text()
    readme = (DATASET / "README.md").read_text()
    rendered = render_card(card, release_tables(DATASET), read_manifest(DATASET)["version"])
    assert " ".join(rendered.split()) == " ".join(readme.split())  # the source may wrap lines differently
    assert card.split("## Dataset Summary", 1)[1].split("## Dataset Structure")[0] in readme


@pytest.mark.parametrize("index", range(3))
def test_card_python_examples_run_on_the_shipped_release(index, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "DATASET_CARD.md").read_text(), re.S)
    assert len(blocks) == 3
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    namespace: dict = {}
    exec(compile(blocks[index], f"DATASET_CARD.md example {index}", "exec"), namespace)  # noqa: S102
    assert os.getcwd() == str(REPO)


def test_shipped_surrogates_come_from_the_shipped_release_and_the_docs_count_them():
    from hwgpt_bench.surrogates_onnx.runtime import file_sha256

    manifest = json.loads((REPO / "surrogates_onnx" / "manifest.json").read_text())
    release = json.loads((DATASET / "MANIFEST.json").read_text())
    sha = file_sha256(DATASET / "MANIFEST.json")
    assert manifest["dataset"]["version"] == release["version"]
    assert manifest["dataset"]["manifest_sha256"] == sha, "retrain: hwgpt-bench train-surrogates"
    assert sha in (REPO / "surrogates_onnx" / "REPORT.md").read_text(), "re-run hwgpt-bench evaluate-surrogates"
    n_models = len(manifest["models"])
    card = (REPO / "DATASET_CARD.md").read_text()
    assert "surrogates_onnx/REPORT.md" in card and not re.search(r"\d+ models", card), \
        "the card cites only release data; surrogate figures live in REPORT.md"
    readme = re.search(r"The shipped models \((\d+), trained on the shipped release ([^:]+):",
                       (REPO / "README.md").read_text())
    assert readme and int(readme.group(1)) == n_models and readme.group(2) == release["version"]
