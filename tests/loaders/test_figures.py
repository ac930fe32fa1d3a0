"""Release tables, figures, the Pareto front and the demo (the README's main job) on the synthetic release.

The tables (``loaders.analysis``) and the demo's text need polars only; the plots need matplotlib (the ``plots``
extra). Without matplotlib (``import matplotlib`` made to fail) the demo still prints every table and exits 0, and
``figures`` is a one-line error naming the extra.
"""

import json
import shutil
import subprocess
import sys

import polars as pl
import pytest

from hwgpt_bench.cli import main
from hwgpt_bench.loaders.analysis import (
    main_workload,
    pareto_front,
    per_arch_latency,
    perplexity_latency,
    space_device_summary,
    workload_scaling,
)
from hwgpt_bench.loaders.plots import PLOTS_INSTALL, demo_text, write_figures

SKIPPED = f"plots skipped: matplotlib is not installed ({PLOTS_INSTALL} gives them)"


@pytest.fixture
def no_matplotlib(monkeypatch):
    """``import matplotlib`` raises ModuleNotFoundError for the test's duration (even when it is installed)."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)


def test_pareto_front_keeps_exactly_the_non_dominated_points():
    frame = pl.DataFrame({"x": [1.0, 2.0, 2.0, 3.0, 4.0, 5.0], "y": [5.0, 3.0, 4.0, 3.0, 1.0, 1.0]})
    front = pareto_front(frame, "x", "y")
    assert front.rows() == [(1.0, 5.0), (2.0, 3.0), (4.0, 1.0)]


def test_summary_counts_architectures_per_space_and_device(release):
    table = space_device_summary(per_arch_latency(release))
    assert table["archs"].to_list() == [5, 5]
    assert (table["lat_p10_ms"] <= table["lat_p50_ms"]).all()
    assert (table["lat_p50_ms"] <= table["lat_p90_ms"]).all()
    assert (table["rel_iqr_p50"] <= table["rel_iqr_p90"]).all()


def test_workload_scaling_compares_each_architecture_with_its_main_workload(release):
    frame = per_arch_latency(release)
    scaling = workload_scaling(frame)
    # the synthetic release measures every architecture at batch 1 and 2 on each device: a tie, which goes to the
    # smaller batch, so batch 1 is the main workload and its ratio is 1
    assert scaling.height == 4 and set(scaling["batch_size"]) == {1, 2} and (scaling["archs"] == 5).all()
    assert (scaling.filter(pl.col("batch_size") == 1)["ratio_to_main"] == 1.0).all()
    one = frame.filter(pl.col("batch_size") == 2, pl.col("device_id") == scaling["device_id"][0])
    expected = (one["latency_ms_median"] / (2 * 256)).median()
    got = scaling.filter(pl.col("batch_size") == 2, pl.col("device_id") == scaling["device_id"][0])["ms_per_token"]
    assert got.item() == pytest.approx(expected)
    assert workload_scaling(main_workload(frame)).height == 0  # one workload per architecture: nothing to compare


def test_figures_are_written_as_png(release, tmp_path):
    pytest.importorskip("matplotlib")
    paths = write_figures(release, tmp_path)
    assert [p.name for p in paths] == ["latency_distribution.png", "noise_vs_size.png", "workload_scaling.png",
                                       "pareto_gpt_nano.png", "training_curves.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


def test_demo_prints_summary_and_front(release, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert main(["demo", "--dataset", str(release), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Per space and device" in out and "Pareto front" in out
    assert f"wrote {tmp_path / 'latency_distribution.png'}" in out and "skipped" not in out
    assert (tmp_path / "pareto_gpt_nano.png").stat().st_size > 1000


def test_a_paired_devices_front_is_on_its_paired_latency():
    """On the shipped release: the paired device's rows carry its paired latency as ``latency_ms`` (the host's pace
    divided out), every other device its bare median."""
    from pathlib import Path

    shipped = Path(__file__).resolve().parents[2] / "dataset"
    frame = perplexity_latency(shipped)
    paired = frame.filter(pl.col("latency_kind") == "paired")
    if not paired.height:
        pytest.skip("the shipped release has no paired device")
    assert paired["device_id"].str.ends_with("-paired").all()
    assert (paired["latency_ms"] == paired["latency_ms_paired"]).all()
    assert not (paired["latency_ms"] == paired["latency_ms_median"]).all()
    bare = frame.filter(pl.col("latency_kind") == "median")
    assert bare.height and (bare["latency_ms"] == bare["latency_ms_median"]).all()
    assert bare["latency_ms_paired"].is_null().all()


def test_demo_without_perplexity_still_summarises_and_plots(release_copy, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    shutil.rmtree(release_copy / "data" / "perplexity")
    manifest = json.loads((release_copy / "MANIFEST.json").read_text())
    del manifest["configs"]["perplexity"]
    (release_copy / "MANIFEST.json").write_text(json.dumps(manifest))
    assert main(["demo", "--dataset", str(release_copy), "--out", str(tmp_path)]) == 0
    assert "no perplexity rows in this release yet" in capsys.readouterr().out
    assert (tmp_path / "latency_distribution.png").exists()


def test_demo_without_matplotlib_prints_every_table_and_exits_0(release, tmp_path, capsys, no_matplotlib):
    assert main(["demo", "--dataset", str(release), "--out", str(tmp_path / "figures")]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    for title in ("# Per space and device", "# Latency vs workload", "# gpt-nano Pareto front on "):
        assert any(line.startswith(title) for line in lines), title
    assert lines[-1] == SKIPPED and lines.count(SKIPPED) == 1  # one line, how to get the plots
    assert "wrote" not in captured.out and "Traceback" not in captured.err
    assert not (tmp_path / "figures").exists()  # nothing written


def test_demo_text_is_the_same_tables_with_and_without_plots(release, tmp_path):
    pytest.importorskip("matplotlib")
    with_plots = demo_text(release, tmp_path, plots=True).splitlines()
    without = demo_text(release, tmp_path / "none", plots=False).splitlines()
    assert [line for line in with_plots if not line.startswith("wrote ")] == without[:-1]
    assert without[-1] == SKIPPED
    assert [line for line in with_plots if line.startswith("wrote ")] == [
        f"wrote {tmp_path / 'latency_distribution.png'}", f"wrote {tmp_path / 'pareto_gpt_nano.png'}"]


def test_figures_without_matplotlib_is_a_one_line_error_naming_the_extra(release, tmp_path, capsys, no_matplotlib):
    assert main(["figures", "--dataset", str(release), "--out", str(tmp_path / "figures")]) == 2
    captured = capsys.readouterr()
    (line,) = captured.err.splitlines()
    assert line.startswith("hwgpt-bench figures: error: matplotlib is not installed")
    assert PLOTS_INSTALL in line and "Traceback" not in captured.err
    assert captured.out == "" and not (tmp_path / "figures").exists()


@pytest.mark.slow
def test_tables_and_plots_modules_import_neither_matplotlib_nor_torch_nor_generation():
    code = ("import sys, hwgpt_bench.loaders.analysis, hwgpt_bench.loaders.plots; print(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('matplotlib', 'torch') or m.startswith('hwgpt_bench.generation')))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"
