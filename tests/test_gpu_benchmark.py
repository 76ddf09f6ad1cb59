"""benchmarks/gpu.py runs end to end in its --quick mode (CPU, tiny sizes), so it cannot rot between GPU runs."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quick_run_measures_every_case_and_writes_json(tmp_path, capsys):
    gpu = load_script()
    out = tmp_path / "gpu.json"
    rows = gpu.main(["--quick", "--json", str(out)])
    assert [row.model for row in rows] == ["coat_lite_tiny", "coat_tiny"]
    compiled = {"inference compiled", "latency CUDA graphs", "training compiled"}
    for row in rows:
        assert row.max_logit_diff < 0.1
        for case, figures in row.figures.items():
            measured = row.model == "coat_lite_tiny" or case not in compiled  # quick compiles one model only
            assert all((v is not None and v > 0) == measured for v in figures.values()), (row.model, case)
    table = capsys.readouterr().out
    assert "| coat_tiny |" in table and "skipped" in table and "CPU (--quick)" in table
    assert "--pixel-augment-on-device: " in table
    saved = json.loads(out.read_text())
    assert saved["device"] == "CPU (--quick)" and len(saved["rows"]) == 2 and not out.with_suffix(".tmp").exists()
    assert saved["pixel_augment_ms_per_train_batch"] > 0


def test_without_cuda_the_full_run_says_how_to_check_the_script(capsys):
    gpu = load_script()
    if gpu.torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(SystemExit) as exit_info:
        gpu.main([])
    assert exit_info.value.code == 2 and "--quick" in capsys.readouterr().err


@pytest.mark.slow
def test_a_failing_triton_path_is_reported_and_the_run_goes_on(monkeypatch, capsys):
    gpu = load_script()

    def broken(fn):
        def run():
            raise RuntimeError("PTX compilation failed\ndetails")

        return run

    monkeypatch.setattr(gpu, "with_triton", broken)
    [row] = gpu.main(["--quick", "--models", "coat_lite_tiny", "--budget-s", "0"])  # no compiled cases
    assert row.triton_error == "RuntimeError: PTX compilation failed"
    assert all("triton" not in figures for figures in row.figures.values())
    assert row.figures["training"]["ours"] > 0
    assert row.figures["training compiled"]["ours"] is None
    printed = capsys.readouterr().out
    assert "coat_lite_tiny: the cuda_triton path failed (RuntimeError: PTX compilation failed)" in printed
