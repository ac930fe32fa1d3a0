"""``hwgpt-bench predict``, ``train-surrogates`` and ``evaluate-surrogates`` through ``hwgpt_bench.cli.main``."""

import json

import pytest

from hwgpt_bench.cli import main
from hwgpt_bench.search_spaces import sample_archs

SPACE, CPU = "gpt-nano", "cpu-syn-2t"


def _predict(trained, *extra: str) -> list[str]:
    return ["predict", "--space", SPACE, "--device", CPU, "--metric", "latency_ms", "--models", str(trained), *extra]


def test_predict_sample_as_json(trained, capsys):
    assert main(_predict(trained, "--sample", "4", "--seed", "2", "--json", "--level", "0.8")) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["arch_id"] for r in rows] == [a.arch_id for a in sample_archs(SPACE, 4, seed=2)]
    for r in rows:
        assert r["lower"] <= r["point"] <= r["upper"] and r["unit"] == "ms" and r["level"] == 0.8
        assert r["workload"]["batch_size"] == 1


def test_predict_one_arch_as_text_and_workload_flag(trained, capsys):
    arch = sample_archs(SPACE, 1, seed=9)[0]
    fields = {k: v for k, v in arch.to_dict().items() if k != "space"}
    assert main(_predict(trained, "--arch", json.dumps(fields))) == 0
    b1 = capsys.readouterr().out.splitlines()
    assert b1[0].startswith("# latency_ms (ms)") and b1[1].split()[0] == arch.arch_id
    assert main(_predict(trained, "--arch", json.dumps(fields), "--batch-size", "2")) == 0
    b2 = capsys.readouterr().out.splitlines()
    assert "forward-b2" in b2[0] and float(b2[1].split()[1]) > float(b1[1].split()[1])


def test_predict_jsonl_file_from_sample_json(trained, tmp_path, capsys):
    assert main(["sample", "--space", SPACE, "--n", "3", "--json"]) == 0
    path = tmp_path / "archs.jsonl"
    path.write_text(capsys.readouterr().out)
    assert main(_predict(trained, "--archs", str(path), "--json")) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3


@pytest.mark.parametrize("extra, message", [
    (["--arch", '{"embed_dim": 100, "n_layer": 4, "n_head": [2,2,2,2], "mlp_ratio": [2,2,2,2], "bias": false}'],
     "embed_dim: 100 is not allowed; allowed values"),
    (["--sample", "2", "--arch", "{}"], "exactly one of"),
    (["--arch", "not json"], "--arch: not JSON"),
    (["--sample", "2", "--level", "0.7"], "level: 0.7"),
])
def test_predict_errors_are_clear(trained, capsys, extra, message):
    assert main(_predict(trained, *extra)) == 2
    assert message in capsys.readouterr().err


def test_predict_without_models_says_how_to_get_them(tmp_path, capsys):
    assert main(["predict", "--space", SPACE, "--device", CPU, "--metric", "latency_ms", "--models", str(tmp_path),
                 "--sample", "1"]) == 2
    assert "train-surrogates" in capsys.readouterr().err


@pytest.mark.slow
def test_train_and_evaluate_commands(synthetic_release, tmp_path, capsys):
    out = tmp_path / "surrogates"
    args = ["train-surrogates", "--dataset", str(synthetic_release), "--out", str(out), "--metric", "latency_ms",
            "perplexity", "--device", "gpu-syn", "--max-iter", "30", "--max-leaf-nodes", "8", "--folds", "3",
            "--mondrian-bins", "2"]
    assert main(args) == 0
    assert "2 models" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"]["max_iter"] == 30
    assert (manifest["recipe"]["calibration"], manifest["recipe"]["folds"], manifest["recipe"]["mondrian_bins"]) == (
        "cross", 3, 2)
    with pytest.raises(SystemExit):
        main([*args[:-4], "--calibration", "magic"])
    assert "argument --calibration: invalid choice: 'magic'" in capsys.readouterr().err
    report = tmp_path / "REPORT.md"
    assert main(["evaluate-surrogates", "--dataset", str(synthetic_release), "--models", str(out), "--report",
                 str(report)]) == 0
    text = report.read_text()
    assert "| gpt-nano / gpu-syn / latency_ms / forward-b1-s256-float32 |" in text
    assert "split_conformal" in text and "gaussian" in text and "Noise ceiling" in text
