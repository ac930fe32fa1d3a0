"""The dataset card's numbers come from the release's tables: rendered at build time, checked by validate."""

import re
import shutil
from pathlib import Path

import pytest

from hwgpt_bench.generation.release import build_release
from hwgpt_bench.loaders import card
from hwgpt_bench.loaders.io import read_manifest, release_tables
from hwgpt_bench.loaders.validate import validate_release

REPO = Path(__file__).resolve().parents[2]
CARD = REPO / "DATASET_CARD.md"


def _facts(text: str) -> dict[str, str]:
    return dict(card.FACT.findall(text))


def test_a_small_release_cites_its_own_numbers_not_the_shipped_ones(release):
    """Regression: a release built from a 7-architecture run still said "3,205 architectures"."""
    readme = (release / "README.md").read_text()
    facts = _facts(readme)
    assert facts["architectures"] == "6"  # the synthetic run's 7th architecture has no rows and is pruned
    assert facts["version"] == "0.1.0" and facts["devices"] == "2"
    assert facts["rel_iqr_p50.gpt-xl-wide"] == card.ABSENT  # a space this release does not have
    assert "3,205" not in readme and "3,955" not in readme
    contents = re.search(r"<!-- table:contents:start -->\n(.*?)<!-- table:contents:end -->", readme, re.S)[1]
    assert contents.count("`gpt-nano`") == len(release_tables(release)["summary"].group_by(
        ["device_id", "phase", "batch_size", "seq_len", "dtype"]).aggregate([]))


def test_every_card_number_outside_markers_is_not_a_release_count(release):
    """The release's counts appear in the card only inside fact markers or generated tables."""
    readme = (release / "README.md").read_text()
    stripped = card.TABLE.sub("", card.FACT.sub("", readme))
    shipped = _facts(CARD.read_text())
    for name in ("architectures", "rows.measurements", "perplexity_archs"):
        assert shipped[name] not in stripped, f"{shipped[name]} ({name}) appears as static prose"


@pytest.mark.parametrize(("old", "new", "message"), [
    ("<!-- fact:architectures -->6<!-- /fact -->", "<!-- fact:architectures -->3,205<!-- /fact -->",
     "fact architectures says '3,205' but the tables give '6'"),
    ("<!-- fact:version -->0.1.0<!-- /fact -->", "<!-- fact:version -->0.2.0<!-- /fact -->",
     "fact version says '0.2.0' but the tables give '0.1.0'"),
    ("<!-- fact:architectures -->", "<!-- fact:architecture -->", "unknown fact 'architecture'"),
    ("forward b2 x 256", "forward b3 x 256", "data table contents differs from the tables"),
])
def test_validate_catches_an_edited_card_number(release_copy, old, new, message):
    readme = release_copy / "README.md"
    text = readme.read_text()
    assert old in text
    readme.write_text(text.replace(old, new, 1))
    problems = validate_release(release_copy)
    assert any(message in p for p in problems), problems


def test_render_is_idempotent_and_the_source_card_is_in_sync_with_the_shipped_release():
    tables = release_tables(REPO / "dataset")
    version = read_manifest(REPO / "dataset")["version"]
    text = CARD.read_text()
    once = card.render_card(text, tables, version)
    assert card.render_card(once, tables, version) == once
    assert _facts(once) == _facts(text), "rebuild the release or re-render DATASET_CARD.md"


def test_unknown_fact_or_table_in_the_source_is_a_build_error(synthetic_runs, tmp_path):
    source = tmp_path / "CARD.md"
    source.write_text(CARD.read_text().replace("<!-- fact:spaces -->", "<!-- fact:spacez -->", 1))
    with pytest.raises(ValueError, match="unknown fact 'spacez'"):
        build_release(synthetic_runs, tmp_path / "d", version="0.1.0", changelog_entry="x", card=source)
    source.write_text(CARD.read_text().replace("table:perplexity:", "table:perplexities:"))
    with pytest.raises(ValueError, match=r"unknown data table\(s\) \['perplexities'\]"):
        build_release(synthetic_runs, tmp_path / "d", version="0.1.0", changelog_entry="x", card=source)
    assert not (tmp_path / "d").exists()


def test_build_release_needs_a_card_source(synthetic_runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no DATASET_CARD.md here: nothing is looked up inside the installed package
    with pytest.raises(ValueError, match="card: DATASET_CARD.md not found; pass the card source"):
        build_release(synthetic_runs, tmp_path / "d", version="0.1.0", changelog_entry="x")
    shutil.copy(CARD, tmp_path / "DATASET_CARD.md")
    assert build_release(synthetic_runs, tmp_path / "d", version="0.1.0", changelog_entry="x")["version"] == "0.1.0"
