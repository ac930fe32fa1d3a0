"""The tidy join of architectures, metrics and perplexity."""

import pytest

from hwgpt_bench.loaders.io import load_table
from hwgpt_bench.loaders.join import tidy_join


def test_tidy_join_summary(release):
    summary, archs, ppl = (load_table(c, release) for c in ("summary", "architectures", "perplexity"))
    joined = tidy_join(release)
    unmeasured = set(archs["arch_id"]) - set(summary["arch_id"])
    assert joined.height == summary.height + len(unmeasured)
    assert not [c for c in joined.columns if c.endswith("_right")]
    assert {"embed_dim", "params", "latency_ms_median", "n_energy", "perplexity", "accuracy"} <= set(joined.columns)
    expected = dict(zip(ppl["arch_id"], ppl["perplexity"], strict=True))
    assert all(expected.get(a) == p for a, p in joined.select("arch_id", "perplexity").iter_rows())
    lonely = joined.filter(joined["arch_id"].is_in(list(unmeasured)))
    assert lonely["latency_ms_median"].null_count() == lonely.height and lonely["perplexity"].null_count() == 0


def test_tidy_join_raw_measurements_prefixes_clashing_columns(release):
    joined = tidy_join(release, metrics="measurements")
    assert {"latency_ms", "run_id", "perplexity_run_id", "perplexity_measured_at", "measured_at"} <= set(joined.columns)
    with pytest.raises(ValueError, match="allowed values"):
        tidy_join(release, metrics="devices")


def test_tidy_join_without_perplexity_config(release_copy):
    import shutil

    shutil.rmtree(release_copy / "data" / "perplexity")
    joined = tidy_join(release_copy)
    assert "perplexity" not in joined.columns and "latency_ms_median" in joined.columns
