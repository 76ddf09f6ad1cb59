"""benchmarks/bench_input.py runs end to end at a tiny size, so the input-pipeline figures can be retaken."""

import importlib.util
import re
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_input.py"


def test_prints_rates_per_worker_and_the_cost_of_each_training_step(capsys):
    spec = importlib.util.spec_from_file_location("bench_input", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--images", "2", "--repeats", "1", "--size", "64"])
    out = capsys.readouterr().out
    rates = dict(re.findall(r"^\| (\w+) [^|]*\| ([\d.]+) \|$", out, flags=re.M))
    assert set(rates) >= {"decode", "training", "evaluation", "RandomResizedCrop", "RandAugment", "Normalize"}
    assert all(float(rates[name]) > 0 for name in ("decode", "training", "evaluation"))  # images/s
    assert "pixel-augment-on-device worker" in out and "ms per image" in out
