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


NANO = {"embed_dim": 128, "n_layer": 4, "n_head": [2, 4, 8, 2], "mlp_ratio": [2, 3, 4, 2], "bias": False}


def _error(capsys) -> str:
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hwgpt-bench predict: error: ")
    return lines[0].removeprefix("hwgpt-bench predict: error: ")


@pytest.mark.parametrize(("change", "message"), [
    ({"bias": "false"}, "--arch: bias: 'false' is not allowed: expected a JSON boolean true/false, got 'false' (str)"),
    ({"bias": "0"}, "--arch: bias: '0' is not allowed: expected a JSON boolean true/false, got '0' (str)"),
    ({"bias": 2}, "--arch: bias: 2 is not allowed: expected a JSON boolean true/false, got 2 (int)"),
    ({"bias": 0}, "--arch: bias: 0 is not allowed: expected a JSON boolean true/false, got 0 (int)"),
    ({"embed_dim": 128.7}, "--arch: embed_dim: 128.7 is not allowed: expected a JSON integer, got 128.7 (float); "
                           "allowed values: [128, 192, 256]"),
    ({"embed_dim": 128.0}, "--arch: embed_dim: 128.0 is not allowed: expected a JSON integer, got 128.0 (float)"),
    ({"n_layer": "4"}, "--arch: n_layer: '4' is not allowed: expected a JSON integer, got '4' (str)"),
    ({"n_head": [2, 4, "8", 2]}, "--arch: n_head[2]: '8' is not allowed: expected a JSON integer"),
    ({"mlp_ratio": [2, 3, 4, True]}, "--arch: mlp_ratio[3]: True is not allowed: expected a JSON integer"),
    ({"foo": 1}, "--arch: unknown fields ['foo']; allowed: space, embed_dim, n_layer, n_head, mlp_ratio, bias"),
])
def test_predict_arch_types_are_strict(trained, capsys, change, message):
    assert main(_predict(trained, "--arch", json.dumps(NANO))) == 0
    capsys.readouterr()
    assert main(_predict(trained, "--arch", json.dumps({**NANO, **change}))) == 2
    assert message in _error(capsys)


def test_predict_arch_repeated_field_is_an_error(trained, capsys):
    text = json.dumps(NANO)[:-1] + ', "bias": true}'
    assert main(_predict(trained, "--arch", text)) == 2
    assert _error(capsys) == "--arch: field 'bias' given twice"


def test_predict_archs_file_names_the_bad_line_and_field(trained, tmp_path, capsys):
    assert main(["sample", "--space", SPACE, "--n", "3", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    path = tmp_path / "archs.jsonl"
    for bad, message in (({"colour": "red"}, "unknown fields ['colour']; allowed: space, embed_dim"),
                         ({"bias": "true"}, "bias: 'true' is not allowed: expected a JSON boolean true/false"),
                         ({"n_layer": 4.0}, "n_layer: 4.0 is not allowed: expected a JSON integer"),
                         ({"params": 1}, "params: 1 does not match the fields"),
                         ({"canonical": rows[0]["canonical"]}, "canonical: ")):
        lines = [json.dumps(rows[0]), json.dumps({**rows[1], **bad}), json.dumps(rows[2])]
        path.write_text("\n".join(lines) + "\n")
        assert main(_predict(trained, "--archs", str(path), "--json")) == 2
        assert _error(capsys).startswith(f"{path}:2: {message}")
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")  # untouched sample rows still work
    assert main(_predict(trained, "--archs", str(path), "--json")) == 0
    assert [json.loads(line)["arch_id"] for line in capsys.readouterr().out.splitlines()] == [
        r["arch_id"] for r in rows]


def test_sample_row_columns_are_those_of_an_architectures_row():
    from hwgpt_bench.generation.architectures import architecture_row
    from hwgpt_bench.search_spaces import ARCH_FIELDS
    from hwgpt_bench.surrogates_onnx.predict import SAMPLE_ROW_COLUMNS

    row = architecture_row(sample_archs(SPACE, 1)[0], 0, 0)
    assert set(SAMPLE_ROW_COLUMNS) == set(row) - {*ARCH_FIELDS, "arch_id"}


def test_predict_unknown_space_and_device_name_only_the_allowed_values(trained, capsys):
    spaces = "gpt-s, gpt-m, gpt-l, gpt-s-wide, gpt-m-wide, gpt-l-wide, gpt-xl-wide, gpt-nano"
    base = ["predict", "--device", "cpu-amd-epyc-2t", "--metric", "latency_ms", "--sample", "1"]
    assert main([*base, "--space", "gpt-q"]) == 2  # the shipped models
    assert _error(capsys) == f"unknown space 'gpt-q'; allowed: {spaces}"
    assert main(["predict", "--space", "gpt-s", "--device", "D", "--metric", "latency_ms", "--sample", "1"]) == 2
    device = _error(capsys)
    assert device.startswith("unknown device 'D' for space gpt-s metric latency_ms; allowed: cpu-amd-epyc-2t, "
                             "cpu-amd-epyc-2t-23b5a934, cpu-amd-epyc-2t-23b5a934-paired, "
                             "cpu-amd-epyc-2t-2e81329d, cpu-amd-epyc-2t-2e81329d-paired, "
                             "cpu-intel-xeon-2t-d712558a (")
    assert "/" not in device
    assert main(["predict", "--space", SPACE, "--device", "gpu-x", "--metric", "latency_ms", "--models",
                 str(trained), "--sample", "1"]) == 2
    assert _error(capsys).startswith(f"unknown device 'gpu-x' for space {SPACE} metric latency_ms; allowed: "
                                     f"{CPU}, gpu-syn (")
    assert main(_predict(trained, "--sample", "1", "--batch-size", "64")) == 2
    workload = _error(capsys)
    assert workload.startswith(f"unknown workload {{'batch_size': 64}} for space {SPACE} device {CPU} metric "
                               "latency_ms")
    assert workload.split("; allowed: ")[1] == (f"{SPACE}/{CPU}/latency_ms/forward-b1-s256-float32, "
                                               f"{SPACE}/{CPU}/latency_ms/forward-b2-s256-float32")


def test_predict_arch_of_another_space_reports_the_space(capsys):
    fields = {k: v for k, v in sample_archs("gpt-s", 1, seed=3)[0].to_dict().items() if k != "arch_id"}
    base = ["predict", "--space", "gpt-s", "--device", "cpu-amd-epyc-2t", "--metric", "latency_ms", "--arch"]
    assert main([*base, json.dumps(fields)]) == 0  # the shipped gpt-s model
    capsys.readouterr()
    assert main([*base, json.dumps({**fields, "space": "gpt-m"})]) == 2
    assert _error(capsys) == "--arch: space: architecture says 'gpt-m' but the model is for 'gpt-s'"


def test_predict_missing_archs_file_is_a_clear_error(capsys, tmp_path):
    from hwgpt_bench.cli import main

    missing = tmp_path / "nope.jsonl"
    assert main(["predict", "--space", "gpt-nano", "--device", "cpu-amd-epyc-2t", "--metric", "latency_ms",
                 "--archs", str(missing)]) == 2
    assert f"archs: {missing} not found" in capsys.readouterr().err


def test_predict_answers_a_workload_between_the_measured_ones(capsys):
    """`hwgpt-bench predict` at batch 2 x 384 tokens (no shipped model of exactly that workload) answers with the
    shipped free-workload model and names the workload; beyond the measured batch sizes it is a one-line error."""
    base = ["predict", "--space", "gpt-s", "--device", "cpu-intel-xeon-2t-d712558a", "--metric", "latency_ms",
            "--phase", "forward", "--seq-len", "384", "--sample", "2"]
    assert main([*base, "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "workload forward-b2-s384-float32" in out and len(out.strip().splitlines()) == 3
    assert main([*base, "--batch-size", "8"]) == 2
    assert _error(capsys).endswith("batch_size: 8 is outside the measured range of gpt-s latency_ms on "
                                   "cpu-intel-xeon-2t-d712558a, phase forward; allowed values: 1 to 4")
