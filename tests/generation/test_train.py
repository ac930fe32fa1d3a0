import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import numpy as np  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from hwgpt_bench.generation import train  # noqa: E402
from hwgpt_bench.generation.train import (  # noqa: E402
    TrainConfig,
    build_optimizer,
    build_supernet,
    latest_checkpoint,
    load_optimizer_tensors,
    lr_at,
    main,
    optimizer_tensors,
    step_archs,
    step_batches,
    train_supernet,
)
from hwgpt_bench.search_spaces import SPACES, SearchSpace  # noqa: E402

TINY = SearchSpace("test-tiny-train", (16, 32), (1, 2), (1, 2), (1, 2), head_size=8, block_size=16, vocab_size=64)


@pytest.fixture
def tiny_space(monkeypatch):
    """A registered toy space: a supernet of ~6k parameters, so that a training step takes milliseconds."""
    monkeypatch.setitem(SPACES, TINY.name, TINY)
    return TINY


def write_data(folder: Path, vocab: int, n_train: int = 4000, n_heldout: int = 300) -> Path:
    """Token files with a learnable pattern (a noisy counter), like corpus.build_corpus writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, n in (("train.bin", n_train), ("heldout.bin", n_heldout)):
        ids = (np.arange(n) + (rng.random(n) < 0.1)) % vocab
        ids.astype(np.uint16).tofile(folder / name)
    return folder


def tiny_config(tmp_path: Path, **overrides) -> TrainConfig:
    data = write_data(tmp_path / "data", TINY.vocab_size)
    args = dict(space=TINY.name, data_dir=str(data), out_dir=str(tmp_path / "out"), batch_size=4, max_steps=6,
                lr=1e-2, min_lr=1e-3, warmup_steps=2, eval_interval=3, eval_tokens=64, ckpt_interval=2, log_interval=1)
    return TrainConfig(**(args | overrides))


@pytest.mark.parametrize(("field", "value"), [("batch_size", 0), ("max_steps", 0), ("lr", 0.0), ("min_lr", 1.0),
                                              ("warmup_steps", 10_000), ("n_random_subnets", -1), ("space", "nope"),
                                              ("seq_len", 10_000), ("device", "tpu"), ("grad_clip", -1.0)])
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"^{field}"):
        TrainConfig(**{field: value})


def test_default_config_is_valid_gpt_nano():
    cfg = TrainConfig()
    assert cfg.space == "gpt-nano" and cfg.sequence_length == 256 and cfg.tokens_per_step == 16 * 256


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(max_steps=100, warmup_steps=10, lr=1.0, min_lr=0.1)
    lrs = [lr_at(s, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3) and lr_at(100, cfg) == pytest.approx(0.1)


def test_step_archs_are_a_seeded_sandwich():
    cfg = TrainConfig(n_random_subnets=3)
    archs = step_archs(cfg, 5)
    assert [r for r, _ in archs] == ["largest", "smallest", "random", "random", "random"]
    assert archs[0][1] == cfg.space_obj.largest() and archs[1][1] == cfg.space_obj.smallest()
    assert step_archs(cfg, 5) == archs
    assert step_archs(cfg, 6) != archs


def test_step_batches_seeded_shifted_and_sliced_by_rank(tiny_space, tmp_path):
    cfg = tiny_config(tmp_path, grad_accum_steps=2)
    tokens = np.arange(5000, dtype=np.uint16)
    full = step_batches(tokens, cfg, 3)
    assert len(full) == 2 and full[0][0].shape == (4, 16) and full[0][0].dtype == torch.long
    x, y = full[0]
    assert torch.equal(x[:, 1:], y[:, :-1])
    halves = [step_batches(tokens, cfg, 3, rank=r, world=2) for r in (0, 1)]
    for micro in range(2):
        assert torch.equal(torch.cat([halves[0][micro][0], halves[1][micro][0]]), full[micro][0])
    assert not torch.equal(step_batches(tokens, cfg, 4)[0][0], x)


def test_optimizer_state_round_trips_through_flat_tensors(tiny_space, tmp_path):
    cfg = tiny_config(tmp_path)
    model = build_supernet(cfg, "cpu")
    opt = build_optimizer(model, cfg)
    model(torch.zeros(1, 4, dtype=torch.long), TINY.largest()).sum().backward()
    opt.step()
    tensors, groups = optimizer_tensors(opt)
    json.dumps(groups)
    other = build_optimizer(model, cfg)
    load_optimizer_tensors(other, tensors, groups)
    a, b = opt.state_dict(), other.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for idx, entry in a["state"].items():
        for key, value in entry.items():
            torch.testing.assert_close(b["state"][idx][key], value, rtol=0, atol=0)


def read_curve(out: Path) -> list[dict]:
    with open(out / "loss_curve.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_training_writes_checkpoints_curve_and_learns(tiny_space, tmp_path):
    cfg = tiny_config(tmp_path, max_steps=30, eval_interval=10, ckpt_interval=10)
    final = train_supernet(cfg)
    out = Path(cfg.out_dir)
    assert final == out / "supernet.safetensors" and final.exists()
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_000020", "step_000030"]
    assert latest_checkpoint(out).name == "step_000030"
    rows = read_curve(out)
    assert [int(r["step"]) for r in rows] == list(range(1, 31))
    assert [r["step"] for r in rows if r["heldout_loss_largest"]] == ["10", "20", "30"]
    assert int(rows[-1]["tokens_seen"]) == 30 * 4 * 16
    assert float(rows[-1]["loss_largest"]) < float(rows[0]["loss_largest"]) - 0.5  # the counter pattern is learnt
    state = json.loads((out / "checkpoints/step_000030/state.json").read_text())
    assert state["step"] == 30 and state["config"] == cfg.to_dict()
    assert not list(out.rglob(".tmp-*")) and not list(out.rglob("*.tmp"))


def test_resume_is_exact(tiny_space, tmp_path):
    straight = tiny_config(tmp_path / "a")
    train_supernet(straight)
    resumed = tiny_config(tmp_path / "b")
    train_supernet(resumed, stop_at_step=3)  # not a checkpoint multiple: stops with its own checkpoint
    assert latest_checkpoint(resumed.out_dir).name == "step_000003"
    assert not (Path(resumed.out_dir) / "supernet.safetensors").exists()
    train_supernet(resumed)
    a = load_file(Path(straight.out_dir) / "supernet.safetensors")
    b = load_file(Path(resumed.out_dir) / "supernet.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=0)
    opt_a = load_file(Path(straight.out_dir) / "checkpoints/step_000006/optimizer.safetensors")
    opt_b = load_file(Path(resumed.out_dir) / "checkpoints/step_000006/optimizer.safetensors")
    for name in opt_a:
        torch.testing.assert_close(opt_b[name], opt_a[name], rtol=0, atol=0)
    curve_a, curve_b = read_curve(Path(straight.out_dir)), read_curve(Path(resumed.out_dir))
    columns = ("step", "lr", "loss_largest", "loss_smallest", "loss_random", "tokens_seen")
    assert [[r[c] for c in columns] for r in curve_b] == [[r[c] for c in columns] for r in curve_a]


def test_resume_drops_curve_rows_written_after_the_checkpoint(tiny_space, tmp_path):
    cfg = tiny_config(tmp_path, max_steps=4)
    train_supernet(cfg, stop_at_step=2)
    with open(Path(cfg.out_dir) / "loss_curve.csv", "a") as fh:
        fh.write("3,0.1,9,9,9,,,1.0,192\n4,0.1,9")  # an interrupted run got further than its last checkpoint
    train_supernet(cfg)
    assert [int(r["step"]) for r in read_curve(Path(cfg.out_dir))] == [1, 2, 3, 4]


def test_resume_refuses_a_different_config(tiny_space, tmp_path):
    train_supernet(tiny_config(tmp_path, max_steps=4), stop_at_step=2)
    with pytest.raises(ValueError, match="lr"):
        train_supernet(tiny_config(tmp_path, max_steps=4, lr=5e-3))
    train_supernet(tiny_config(tmp_path, max_steps=4, eval_interval=1))  # evaluation settings may change


def test_data_must_fit_the_vocabulary(tiny_space, tmp_path):
    cfg = tiny_config(tmp_path)
    write_data(Path(cfg.data_dir), vocab=1000)
    with pytest.raises(ValueError, match="data_dir"):
        train_supernet(cfg)


def test_cli_help_and_run(tiny_space, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--batch-size", "--n-random-subnets", "--stop-at-step", "--eval-tokens", "--ckpt-interval"):
        assert flag in text
    cfg = tiny_config(tmp_path)
    assert main(["--space", cfg.space, "--data-dir", cfg.data_dir, "--out-dir", cfg.out_dir, "--batch-size", "2",
                 "--max-steps", "2", "--warmup-steps", "1", "--eval-tokens", "32", "--threads", "1"]) == 0
    assert (Path(cfg.out_dir) / "supernet.safetensors").exists()


def _torchrun(args: list[str], env: dict) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "hwgpt_bench.generation.train", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_torchrun_two_ranks_gloo_matches_one_process(tmp_path):
    """DDP on CPU: 2 ranks x 2 sequences give the same weights as 1 process x 4 sequences (up to float rounding)."""
    data = write_data(tmp_path / "data", vocab=8192, n_train=3000, n_heldout=200)
    common = ["--data-dir", str(data), "--batch-size", "4", "--seq-len", "32", "--max-steps", "3", "--warmup-steps",
              "1", "--eval-tokens", "64", "--ckpt-interval", "2", "--n-random-subnets", "1"]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    result = _torchrun([*common, "--out-dir", str(tmp_path / "ddp")], env)
    assert result.returncode == 0, result.stderr[-4000:]
    assert latest_checkpoint(tmp_path / "ddp").name == "step_000003"
    assert len(read_curve(tmp_path / "ddp")) == 3
    assert main([*common, "--out-dir", str(tmp_path / "single"), "--threads", "1"]) == 0
    a = load_file(tmp_path / "single" / "supernet.safetensors")
    b = load_file(tmp_path / "ddp" / "supernet.safetensors")
    for name in a:
        # Adam divides by sqrt(v), so the reordered float sums of the DDP average can move a single weight by a
        # little more than 1e-5 on some CPUs (seen: 1 of 262,144 elements, 1.2e-5, on an AVX-512 Xeon); the mean
        # difference stays at rounding level
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=3e-5)
        assert (b[name] - a[name]).abs().mean() < 1e-6, name


def test_module_is_runnable():
    result = subprocess.run([sys.executable, "-m", "hwgpt_bench.generation.train", "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and "--grad-accum-steps" in result.stdout
    assert train.__doc__ and "sandwich" in train.__doc__.lower()


# ---- compute dtype, tracked subnets, standalone architectures ------------------------------------------------------
GPT_S_ARCH = "gpt-s|e192|l10|h4,4,4,4,4,4,4,4,4,4|m2,2,2,2,2,2,2,2,2,2|b0"


@pytest.mark.parametrize(("field", "value", "rule"), [("dtype", "fp16", "must be one of"),
                                                      ("n_eval_random", -1, "must be >= 0"),
                                                      ("arch", GPT_S_ARCH, "must be an architecture of space"),
                                                      ("arch", "gpt-nano|e128", "canonical: cannot parse"),
                                                      ("arch", "gpt-nano|e100|l4|h2,2,2,2|m2,2,2,2|b0",
                                                       "embed_dim: 100 is not allowed")])
def test_new_fields_are_validated_by_name(field, value, rule):
    kwargs = {field: value} | ({"n_random_subnets": 0} if field == "arch" else {})
    with pytest.raises(ValueError, match=f"^{field}: {rule}"):
        TrainConfig(**kwargs)


def test_a_standalone_arch_needs_no_random_subnets():
    smallest = SPACES["gpt-nano"].smallest().canonical
    with pytest.raises(ValueError, match="^n_random_subnets: must be 0 when arch is set"):
        TrainConfig(arch=smallest)
    with pytest.raises(ValueError, match="^n_eval_random: must be 0 when arch is set"):
        TrainConfig(arch=smallest, n_random_subnets=0, n_eval_random=2)


def test_progress_label_names_the_supernet_space_or_the_standalone_architecture():
    smallest = SPACES["gpt-nano"].smallest()
    assert train._progress_label(TrainConfig(space="gpt-nano")) == "supernet gpt-nano"
    cfg = TrainConfig(arch=smallest.canonical, n_random_subnets=0)
    assert train._progress_label(cfg) == f"standalone {smallest.arch_id}"


def test_eval_subnets_are_fixed_distinct_and_seeded():
    cfg = TrainConfig(n_eval_random=3)
    subnets = train.eval_subnets(cfg)
    assert [r for r, _ in subnets] == ["largest", "smallest", "random_1", "random_2", "random_3"]
    assert len({a for _, a in subnets}) == 5 and subnets == train.eval_subnets(TrainConfig(n_eval_random=3))
    assert subnets[2:] != train.eval_subnets(TrainConfig(n_eval_random=3, seed=1))[2:]
    assert subnets[:4] == train.eval_subnets(TrainConfig(n_eval_random=2))  # more random subnets extend the list
    cols = train.curve_columns(cfg)
    assert cols[-5:] == ("heldout_loss_random_1", "heldout_loss_random_2", "heldout_loss_random_3", "elapsed_s",
                         "tokens_seen")
    assert train.curve_columns(TrainConfig()) == train.CURVE_COLUMNS


def test_bfloat16_training_tracks_random_subnets_and_learns(tiny_space, tmp_path):
    cfg = tiny_config(tmp_path, max_steps=30, eval_interval=10, ckpt_interval=10, dtype="bfloat16", n_eval_random=2)
    train_supernet(cfg)
    out = Path(cfg.out_dir)
    rows = read_curve(out)
    assert [r["step"] for r in rows if r["heldout_loss_random_2"]] == ["10", "20", "30"]
    assert float(rows[-1]["loss_largest"]) < float(rows[0]["loss_largest"]) - 0.5
    assert float(rows[-1]["heldout_loss_random_1"]) < float(rows[9]["heldout_loss_random_1"])
    subnets = json.loads((out / "eval_subnets.json").read_text())
    assert subnets == {role: arch.canonical for role, arch in train.eval_subnets(cfg)}
    assert sorted(subnets) == ["largest", "random_1", "random_2", "smallest"]
    weights = load_file(out / "supernet.safetensors")
    assert all(t.dtype == torch.float32 for t in weights.values())  # autocast leaves the weights in float32


def test_a_curve_of_other_columns_is_never_appended_to(tiny_space, tmp_path):
    cfg = tiny_config(tmp_path, max_steps=4, n_eval_random=1)
    train_supernet(tiny_config(tmp_path, max_steps=4), stop_at_step=2)
    with pytest.raises(ValueError, match="^config: cannot resume, fields \\['n_eval_random'\\]"):
        train_supernet(cfg)
    curve = Path(cfg.out_dir) / "loss_curve.csv"
    shutil.rmtree(Path(cfg.out_dir) / "checkpoints")  # another run's curve left without its checkpoints
    before = curve.read_text()
    with pytest.raises(ValueError, match="^loss curve: .* has columns"):
        train_supernet(cfg)
    assert curve.read_text() == before and [int(r["step"]) for r in read_curve(Path(cfg.out_dir))] == [1, 2]


def test_a_curve_has_its_header_on_disk_before_any_step_and_an_empty_one_is_started_anew(tmp_path):
    path = tmp_path / "run" / "loss_curve.csv"
    curve = train.LossCurve(path, 0, ("step", "loss"))
    assert path.read_text().splitlines() == ["step,loss"]  # a kill now leaves a curve that resumes
    curve.append({"step": 1, "loss": 2.5})
    curve.close()
    assert path.read_text().splitlines() == ["step,loss", "1,2.5"]
    resumed = train.LossCurve(path, 1, ("step", "loss"))
    resumed.append({"step": 2, "loss": 2.25})
    resumed.close()
    assert path.read_bytes() == b"step,loss\n1,2.5\n2,2.25\n"  # one line ending throughout
    path.write_text("")  # what a run killed before its header was flushed left (before the header was atomic)
    train.LossCurve(path, 0, ("step", "loss")).close()
    assert path.read_text().splitlines() == ["step,loss"]


def test_checkpoints_older_than_a_field_resume_with_its_default(tiny_space, tmp_path):
    cfg = tiny_config(tmp_path, max_steps=4)
    train_supernet(cfg, stop_at_step=2)
    state_path = latest_checkpoint(cfg.out_dir) / "state.json"
    state = json.loads(state_path.read_text())
    for name in ("dtype", "n_eval_random", "arch"):  # a checkpoint written before these fields existed
        del state["config"][name]
    state_path.write_text(json.dumps(state))
    train_supernet(cfg)
    assert latest_checkpoint(cfg.out_dir).name == "step_000004"
    with pytest.raises(ValueError, match="dtype"):
        train_supernet(tiny_config(tmp_path, max_steps=6, dtype="bfloat16"))


def test_a_standalone_run_trains_only_its_architecture(tiny_space, tmp_path):
    arch = TINY.smallest()
    cfg = tiny_config(tmp_path, max_steps=20, eval_interval=10, ckpt_interval=10, arch=arch.canonical,
                      n_random_subnets=0)
    assert train.step_archs(cfg, 7) == [("standalone", arch)] == train.eval_subnets(cfg)
    train_supernet(cfg)
    out = Path(cfg.out_dir)
    rows = read_curve(out)
    assert list(rows[0]) == ["step", "lr", "loss_standalone", "heldout_loss_standalone", "elapsed_s", "tokens_seen"]
    assert float(rows[-1]["loss_standalone"]) < float(rows[0]["loss_standalone"]) - 0.5
    assert [r["step"] for r in rows if r["heldout_loss_standalone"]] == ["10", "20"]
    trained, initial = load_file(out / "supernet.safetensors"), build_supernet(cfg, "cpu").state_dict()
    changed = {name for name in trained if not torch.equal(trained[name], initial[name])}
    assert changed, "the architecture's own weights were trained"
    # The smallest architecture has one layer: the second layer's weights never see a gradient.
    untouched = [name for name in trained if ".1." in name]
    assert untouched and not changed & set(untouched)


def test_every_weights_file_describes_its_training(tiny_space, tmp_path):
    from hwgpt_bench.files import file_sha256
    from hwgpt_bench.generation.checkpoints import SIDECAR, curve_rows, describe_checkpoint
    from hwgpt_bench.loaders.schema import check_table, table_from_rows

    cfg = tiny_config(tmp_path, max_steps=6, eval_interval=3, ckpt_interval=2)
    final = train_supernet(cfg)
    rows = read_curve(Path(cfg.out_dir))
    row = describe_checkpoint(final)
    assert row["checkpoint_sha256"] == file_sha256(final)[:12] and row["weights"] == "supernet"
    assert (row["train_steps"], row["tokens_seen"], row["batch_size"], row["seq_len"]) == (6, 6 * 4 * 16, 4, 16)
    assert row["heldout_loss"] == float(rows[5]["heldout_loss_largest"])
    assert row["train_data_sha256"] == file_sha256(Path(cfg.data_dir) / "train.bin")[:12]
    assert json.loads(row["config_json"]) == cfg.to_dict() and row["train_elapsed_s"] > 0
    middle = describe_checkpoint(Path(cfg.out_dir) / "checkpoints/step_000004/supernet.safetensors")
    assert (middle["train_steps"], middle["heldout_loss"]) == (4, float(rows[2]["heldout_loss_largest"]))
    curve = curve_rows(final)
    assert len([r for r in curve if r["split"] == "train"]) == 6 * 3  # largest, smallest, mean of the random ones
    held = [r for r in curve if r["split"] == "heldout"]
    assert [(r["step"], r["subnet"]) for r in held] == [(3, "largest"), (3, "smallest"), (6, "largest"),
                                                         (6, "smallest")]
    assert held[-2]["loss"] == row["heldout_loss"] and held[-2]["canonical"] == TINY.largest().canonical
    assert {r["canonical"] for r in curve if r["subnet"] == "random"} == {None}
    assert check_table("training_curves", table_from_rows("training_curves", curve)) == []
    assert max(r["step"] for r in curve_rows(Path(cfg.out_dir) / "checkpoints/step_000004/supernet.safetensors")) == 4
    (final.parent / SIDECAR).unlink()  # a final file written before supernet.json existed
    legacy = describe_checkpoint(final)
    assert legacy["train_steps"] == 6 and legacy["train_data_sha256"] is None
    assert legacy["train_elapsed_s"] == float(rows[-1]["elapsed_s"])
    (final.parent / "config.json").unlink()
    with pytest.raises(ValueError, match="^checkpoint: .* has no training record"):
        describe_checkpoint(final)


def test_a_standalone_weights_file_names_its_architecture(tiny_space, tmp_path):
    from hwgpt_bench.generation.checkpoints import describe_checkpoint

    arch = TINY.largest()
    cfg = tiny_config(tmp_path, max_steps=2, arch=arch.canonical, n_random_subnets=0, eval_interval=2)
    row = describe_checkpoint(train_supernet(cfg))
    assert (row["weights"], row["arch_id"], row["n_random_subnets"]) == ("standalone", arch.arch_id, 0)
    assert row["heldout_loss"] == float(read_curve(Path(cfg.out_dir))[-1]["heldout_loss_standalone"])
