"""Real profiling runs through the CLI: kill -9 and resume loses nothing and duplicates nothing; shards merge."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hwgpt_bench.files import file_sha256
from hwgpt_bench.generation.jobs import merge_runs
from hwgpt_bench.generation.runs import merge_parts, part_files, read_parts
from hwgpt_bench.loaders.schema import PRIMARY_KEYS
from hwgpt_bench.panel import PANEL_K, calibration_panel, paired_reference
from hwgpt_bench.search_spaces import sample_archs

pytest.importorskip("torch")

N_ARCHS = 8
PROFILE = ["profile", "--space", "gpt-nano", "--n", str(N_ARCHS), "--seq-len", "16", "--warmup", "0",
           "--repeats", "2", "--threads", "1", "--no-memory", "--flush-every", "0"]


SAMPLE_IDS = {a.arch_id for a in sample_archs("gpt-nano", N_ARCHS, seed=0)}
PANEL_IDS = {a.arch_id for a in calibration_panel("gpt-nano")}


def _sample_rows(run_dir: Path) -> int:
    """``architectures`` rows of the profiled sample (the session adds those of its calibration panel)."""
    ids = read_parts([run_dir / "architectures"], "architectures").column("arch_id").to_pylist()
    assert len(ids) == len(set(ids)) and set(ids) == SAMPLE_IDS | PANEL_IDS
    return len(set(ids) & SAMPLE_IDS)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "hwgpt_bench", *args]


def _measurement_keys(run_dir: Path) -> list[tuple]:
    data = read_parts([run_dir / "measurements"], "measurements")
    return list(zip(*(data.column(k).to_pylist() for k in PRIMARY_KEYS["measurements"]), strict=True))


def _kill_after_parts(cmd: list[str], folder: Path, n_parts: int, timeout_s: float = 120) -> None:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    while len(part_files(folder)) < n_parts and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_kill_9_then_rerun_loses_nothing_and_writes_no_duplicate(tmp_path):
    out = tmp_path / "run"
    cmd = _cli(*PROFILE, "--out", str(out))
    _kill_after_parts(cmd, out / "measurements", 3)
    before = _measurement_keys(out)
    assert 3 <= len(before) < N_ARCHS, "the kill must land mid-run"
    first_run_ids = set(read_parts([out / "measurements"], "measurements").column("run_id").to_pylist())
    (killed,) = merge_parts([out], "sessions").to_pylist()
    subprocess.run(cmd, check=True, capture_output=True)
    after = _measurement_keys(out)
    assert len(after) == len(set(after)) == N_ARCHS
    # the killed session keeps its start row and start panel; the rerun is a new session with both panels
    sessions = sorted(merge_parts([out], "sessions").to_pylist(), key=lambda r: r["started_at"])
    assert len(sessions) == 2 and sessions[0]["session_id"] == killed["session_id"] != sessions[1]["session_id"]
    assert sessions[0]["ended_at"] is None and sessions[1]["ended_at"] is not None
    panel = merge_parts([out], "panel").to_pylist()
    assert sorted((r["session_id"], r["panel_position"]) for r in panel) == sorted(
        [(killed["session_id"], "start")] * PANEL_K + [(sessions[1]["session_id"], p) for p in ("start", "end")
                                                       for _ in range(PANEL_K)])
    measured = read_parts([out / "measurements"], "measurements")
    assert set(measured.column("session_id").to_pylist()) == {s["session_id"] for s in sessions}
    assert set(before) <= set(after)
    assert first_run_ids < set(read_parts([out / "measurements"], "measurements").column("run_id").to_pylist())
    assert not [p for p in (out / "measurements").iterdir() if p.name.startswith(".tmp-")]
    subprocess.run(cmd, check=True, capture_output=True)  # a third run has nothing left to do
    assert len(_measurement_keys(out)) == N_ARCHS
    assert _sample_rows(out) == N_ARCHS
    assert merge_parts([out], "sessions").num_rows == 3  # every run is a session of its own, never resumed


@pytest.mark.slow
def test_shards_partition_the_work_and_merge(tmp_path):
    for i in range(2):
        subprocess.run(_cli(*PROFILE, "--shard", f"{i}/2", "--out", str(tmp_path / f"s{i}")), check=True,
                       capture_output=True)
    shard_keys = [set(_measurement_keys(tmp_path / f"s{i}")) for i in range(2)]
    assert shard_keys[0] and shard_keys[1] and not shard_keys[0] & shard_keys[1]
    counts = merge_runs([tmp_path / "s0", tmp_path / "s1"], tmp_path / "merged")
    assert counts["measurements"] == N_ARCHS and _sample_rows(tmp_path / "merged") == N_ARCHS \
        and counts["devices"] == 1
    assert counts["architectures"] == len(SAMPLE_IDS | PANEL_IDS) and counts["sessions"] == 2
    assert counts["panel"] == 2 * 2 * PANEL_K  # two sessions, each with a start and an end panel
    assert set(_measurement_keys(tmp_path / "merged")) == shard_keys[0] | shard_keys[1]


def test_bad_phase_is_rejected_before_any_work(tmp_path):
    out = subprocess.run(_cli("profile", "--space", "gpt-nano", "--n", "2", "--phase", "backward", "--out",
                              str(tmp_path)), capture_output=True, text=True)
    assert out.returncode == 2 and "invalid choice: 'backward'" in out.stderr
    assert not (tmp_path / "measurements").exists()


@pytest.mark.slow
def test_eval_perplexity_run_is_resumable_and_sharded(tmp_path):
    import numpy as np
    import torch

    from hwgpt_bench.generation.checkpoints import SIDECAR
    from hwgpt_bench.generation.supernet import SuperGPT, save_supernet
    from hwgpt_bench.generation.train import TrainConfig

    torch.manual_seed(0)
    ckpt = tmp_path / "supernet.safetensors"
    save_supernet(SuperGPT("gpt-nano"), ckpt)
    data = tmp_path / "corpus"
    data.mkdir()
    np.random.default_rng(0).integers(0, 8192, size=2000, dtype=np.uint16).tofile(data / "heldout.bin")
    base = ["eval-perplexity", "--space", "gpt-nano", "--n", "4", "--checkpoint", str(ckpt), "--data-dir", str(data),
            "--eval-tokens", "512", "--threads", "1", "--flush-every", "0"]
    refused = subprocess.run(_cli(*base, "--out", str(tmp_path / "run")), capture_output=True, text=True)
    assert refused.returncode == 2 and "checkpoint: " in refused.stderr and "no training record" in refused.stderr
    assert not (tmp_path / "run").exists()
    config = TrainConfig(max_steps=3, warmup_steps=1).to_dict()
    record = {"format": "hwgpt-bench-weights/1", "step": 3, "config": config, "elapsed_s": 1.5,
              "data_sha256": "ab" * 32}
    (tmp_path / SIDECAR).write_text(json.dumps(record))
    for shard in ("0/2", "1/2", "0/2"):  # the third call finds its shard done
        subprocess.run(_cli(*base, "--shard", shard, "--out", str(tmp_path / "run")), check=True, capture_output=True)
    ppl = read_parts([tmp_path / "run" / "perplexity"], "perplexity")
    assert sorted(ppl.column("arch_id").to_pylist()) == sorted(set(ppl.column("arch_id").to_pylist()))
    assert ppl.num_rows == 4 and set(ppl.column("eval_tokens").to_pylist()) == {512}
    # an untrained supernet is close to uniform over the 8192-token vocabulary
    assert all(1000 < p < 60000 for p in ppl.column("perplexity").to_pylist())
    checkpoints = read_parts([tmp_path / "run" / "checkpoints"], "checkpoints").to_pylist()
    assert len(checkpoints) == 1  # one row although three calls evaluated with it
    row = checkpoints[0]
    assert row["checkpoint_sha256"] == ppl.column("checkpoint_sha256")[0].as_py() == file_sha256(ckpt)[:12]
    assert (row["weights"], row["arch_id"], row["train_steps"]) == ("supernet", None, 3)
    assert row["tokens_seen"] == 3 * 16 * 256
    assert (row["train_data_sha256"], row["train_elapsed_s"], row["heldout_loss"]) == ("ab" * 6, 1.5, None)


@pytest.mark.parametrize(("flags", "message"), [
    (["--seq-len", "4096"], "seq_len: 4096 does not fit space 'gpt-nano'"),
    (["--n", "0"], "n: must be an integer >= 1"),
    (["--n", "99999999"], "n: 99999999 exceeds"),
    (["--limit", "0"], "limit: must be an integer >= 1"),
    (["--shard", "2/2"], "shard: need 0 <= index < count"),
    (["--repeats", "0"], "n_repeats: must be an integer >= 1"),
    (["--flush-every", "-1"], "flush_every: must be a number of seconds >= 0"),
    (["--min-timed-ms", "-5"], "min_timed_ms: must be a finite number >= 0"),
    (["--min-timed-ms", "inf"], "min_timed_ms: must be a finite number >= 0"),
    (["--repeats", "201"], "n_repeats: must be at most 200"),
    (["--paired-reference", "--device", "cuda"], "paired_reference: a paired reference is timed on CPU hosts only"),
])
def test_bad_profile_arguments_are_rejected_before_anything_is_written(tmp_path, capsys, flags, message):
    """Regression: --seq-len 4096 was rejected only after parts were written; --n 0 exited 0 with a devices row."""
    from hwgpt_bench.cli import main

    out = tmp_path / "run"
    argv = ["profile", "--space", "gpt-nano", "--n", "2", "--threads", "1", "--no-memory", "--out", str(out), *flags]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_a_paired_run_records_the_reference_and_a_device_never_mixes_protocols(tmp_path, capsys):
    """Every row of a paired run holds one reference step per repeat, of the space's paired reference (whose
    ``architectures`` row the session wrote), under the host's device id with ``-paired``; one device id is never
    measured both ways: with an explicit ``--device-id`` either order is refused with nothing written."""
    from hwgpt_bench.cli import main
    from hwgpt_bench.generation.environment import PAIRED_SUFFIX, default_device_id

    out = tmp_path / "run"
    base = ["profile", "--space", "gpt-nano", "--seq-len", "16", "--warmup", "0", "--repeats", "2", "--threads", "1",
            "--no-memory"]
    assert main([*base, "--out", str(out), "--n", "2", "--paired-reference"]) == 0
    rows = read_parts([out / "measurements"], "measurements").to_pylist()
    reference = paired_reference("gpt-nano")
    assert {r["device_id"] for r in rows} == {default_device_id("cpu", 1) + PAIRED_SUFFIX}
    assert len(rows) == 2 and {r["reference_arch_id"] for r in rows} == {reference.arch_id}
    assert all(len(r["reference_ms"]) == len(r["latency_ms"]) == 2 and min(r["reference_ms"]) > 0 for r in rows)
    assert {r["reference_missing_reason"] for r in rows} == {None}
    assert reference.arch_id in read_parts([out / "architectures"], "architectures").column("arch_id").to_pylist()
    panel = read_parts([out / "panel"], "panel").to_pylist()
    assert panel and all(len(r["reference_ms"]) == len(r["latency_ms"]) for r in panel)
    assert main([*base, "--out", str(out), "--n", "3"]) == 0  # unpaired: the host's own device id, beside it
    assert len(_measurement_keys(out)) == 5
    for first, second, taken in ((["--paired-reference"], [], "with"), ([], ["--paired-reference"], "without")):
        other = tmp_path / f"named-{taken}"
        named = [*base, "--device-id", "cpu-test-1t", "--out", str(other)]
        assert main([*named, "--n", "1", *first]) == 0
        sessions = merge_parts([other], "sessions").num_rows
        capsys.readouterr()
        assert main([*named, "--n", "2", *second]) == 2
        err = capsys.readouterr().err
        assert "paired_reference: " in err and f"holds 1 measurement(s) of cpu-test-1t taken {taken} a paired" in err
        assert len(_measurement_keys(other)) == 1 and merge_parts([other], "sessions").num_rows == sessions
