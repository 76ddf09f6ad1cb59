"""`coat info` / `coat convert` and the one-line-error contract."""

import json
import subprocess
import sys

import pytest
import torch

import coat
from coat.cli import main


def test_info_lists_all_variants(capsys):
    assert main(["info", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == coat.list_models()
    for row in rows:
        assert row["params_m"] == row["paper_params_m"]
        assert row["gmacs"] == pytest.approx(row["paper_gmacs"], rel=0.02)


def test_info_table_for_one_variant(capsys):
    assert main(["info", "coat_tiny"]) == 0
    out = capsys.readouterr().out
    assert "coat_tiny" in out and "78.3" in out and '"parallel_depth": 6' in out


def test_convert_authors_to_ours(authors_checkpoint, tmp_path, capsys):
    dst = tmp_path / "ours.safetensors"
    assert main(["convert", str(authors_checkpoint("coat_tiny")), str(dst)]) == 0
    assert "authors format, coat_tiny" in capsys.readouterr().out
    reference = coat.create_model("coat_tiny", pretrained=authors_checkpoint("coat_tiny")).eval()
    converted = coat.load_model(dst).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(reference(x), converted(x))
    # an existing destination is never overwritten silently
    assert main(["convert", str(authors_checkpoint("coat_tiny")), str(dst)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_convert_bad_file_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_text("not weights")
    result = subprocess.run(
        [sys.executable, "-m", "coat.cli", "convert", str(bad), str(tmp_path / "o.safetensors")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert str(bad) in result.stderr


def test_convert_wrong_variant_exit_2(authors_checkpoint, tmp_path, capsys):
    code = main(
        [
            "convert",
            str(authors_checkpoint("coat_lite_tiny")),
            str(tmp_path / "o.safetensors"),
            "--model",
            "coat_lite_small",
        ]
    )
    assert code == 2
    assert "shapes differ" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["--help"], ["info"], ["info", "coat_tiny", "--json"], ["train", "--help"]])
def test_commands_exit_quietly_when_the_reader_closes_the_pipe(args):
    """As `coat info | head -1`, with the reader gone before the first write."""
    child = subprocess.Popen([sys.executable, "-m", "coat.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child.stdout.close()  # no reader: the first write fails with EPIPE
    stderr = child.stderr.read().decode()
    # 128 + SIGPIPE, as a shell reports for tools that SIGPIPE ends; argparse's help ignores write errors itself
    assert child.wait(timeout=120) == (0 if "--help" in args else 141)
    assert stderr == ""


def test_every_typed_error_is_a_coat_error():
    from coat.data.datasets import CorruptImageError, DataError
    from coat.download import DownloadError
    from coat.errors import InputNotFoundError, OutputExistsError, UsageError
    from coat.export import ExportError
    from coat.extras import MissingExtraError
    from coat.train.loop import TrainingError

    for error, builtin in [
        (coat.CheckpointError, ValueError),
        (DataError, ValueError),
        (CorruptImageError, ValueError),
        (DownloadError, ValueError),
        (ExportError, ValueError),
        (TrainingError, RuntimeError),
        (MissingExtraError, ImportError),
        (UsageError, ValueError),
        (OutputExistsError, FileExistsError),
        (InputNotFoundError, FileNotFoundError),
    ]:
        assert issubclass(error, coat.CoatError) and issubclass(error, builtin), error


def test_a_bug_shows_its_traceback_instead_of_one_line(monkeypatch):
    """Only CoatError is bad input; anything else raised by a command is a bug and must not be hidden."""
    from coat.commands import model_commands

    def broken(args):
        raise ValueError("a bug, not bad input")

    monkeypatch.setattr(model_commands, "run_info", broken)
    with pytest.raises(ValueError, match="a bug"):
        main(["info"])


@pytest.mark.parametrize(
    "argv, function",
    [
        (["eval", "--checkpoint", "c.safetensors"], "coat.evaluation:evaluate_checkpoint"),
        (
            ["detect", "eval", "--checkpoint", "c", "--images", "i", "--annotations", "a.json"],
            "coat.detection.inference:evaluate_detector_checkpoint",
        ),
        (["detect", "predict", "img.png", "--checkpoint", "c"], "coat.detection.inference:predict_detections"),
    ],
)
def test_each_option_of_a_thin_command_is_a_parameter_of_its_library_function(argv, function):
    """The commands pass their options by name (call_with_options): a renamed parameter must not drop one."""
    import importlib
    import inspect

    from coat.cli import build_parser
    from coat.commands.call import PARSER_FIELDS

    module, name = function.split(":")
    parameters = inspect.signature(getattr(importlib.import_module(module), name)).parameters
    options = set(vars(build_parser().parse_args(argv))) - PARSER_FIELDS
    assert options <= set(parameters), options - set(parameters)


def test_an_option_without_a_parameter_is_a_bug_not_a_silent_default():
    import argparse

    from coat.commands.call import call_with_options

    def evaluate(checkpoint, overwrite=False):
        return checkpoint, overwrite

    args = argparse.Namespace(command="eval", func=None, checkpoint="c", overwrite=True)
    assert call_with_options(evaluate, args) == ("c", True)
    with pytest.raises(TypeError, match="no parameters \\['workers'\\]"):
        call_with_options(evaluate, argparse.Namespace(command="eval", checkpoint="c", workers=2))
