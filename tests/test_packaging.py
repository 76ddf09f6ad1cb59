"""The install contract: a slim core that works without the extras, one-line errors naming the extra,
one version source, and (slow) a built wheel installed into a fresh virtual environment."""

import json
import os
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import coat
from coat.extras import EXTRAS, install_line

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
OPTIONAL_MODULES = sorted({m for _, modules in EXTRAS.values() for m in modules})

# Run in a fresh interpreter where every optional library looks uninstalled (a None entry in
# sys.modules makes both `import` and importlib.util.find_spec report it missing).
SLIM_CORE_SCRIPT = """
import contextlib, io, json, sys
for name in {blocked!r}:
    sys.modules[name] = None
import torch
import coat
from coat.cli import main

def cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exit:
            code = exit.code
    return {{"code": code, "out": out.getvalue(), "err": err.getvalue()}}

model = coat.create_model("coat_lite_tiny", num_classes=3).eval()
with torch.no_grad():
    logits = model(torch.randn(1, 3, 64, 64))
runs = {{
    "help": cli("--help"), "version": cli("--version"), "info": cli("info", "coat_lite_tiny"),
    "train": cli("train", "--epochs", "1", "--output", {output!r}),
    "eval": cli("eval", "--checkpoint", "missing.safetensors"),
    "export": cli("export", "--output", "m.onnx"), "explain": cli("explain", "x.png", "--checkpoint", "c"),
    "detect_train": cli("detect", "train", "--train-images", "d", "--output", {output!r}),
}}
loaded = [name for name in {blocked!r} if sys.modules.get(name) is not None]
print(json.dumps({{"logits": list(logits.shape), "runs": runs, "loaded": loaded}}))
"""


def test_version_has_one_source():
    assert PYPROJECT["project"]["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "coat.__version__"}
    assert metadata.version("coat-pytorch") == coat.__version__


def test_dependencies_have_no_upper_bounds():
    project = PYPROJECT["project"]
    requirements = project["dependencies"] + [r for group in project["optional-dependencies"].values() for r in group]
    for requirement in requirements:
        assert "<" not in requirement and "==" not in requirement, requirement


def test_extras_table_matches_pyproject():
    """Each extra's modules are what pyproject.toml's optional-dependencies install (directly or via another)."""
    groups = PYPROJECT["project"]["optional-dependencies"]

    def distributions(extra: str) -> set[str]:
        names = set()
        for requirement in groups[extra]:
            name = requirement.split(">")[0].split("[")[0].strip()
            if name == "coat-pytorch":
                inner = requirement.split("[")[1].rstrip("]").split(",")
                names |= set().union(*(distributions(e) for e in inner))
            else:
                names.add(name.replace("-", "_"))  # the module a distribution installs (segmentation-models-pytorch)
        return names

    for extra, (_, modules) in EXTRAS.items():
        assert set(modules) == distributions(extra), extra
    assert set(groups["all"][0].split("[")[1].rstrip("]").split(",")) == set(EXTRAS) - {"plots", "peers"}
    assert distributions("plots") <= distributions("train")


def test_slim_core_runs_and_commands_name_their_extra(tmp_path):
    script = SLIM_CORE_SCRIPT.format(blocked=OPTIONAL_MODULES, output=str(tmp_path / "run"))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["logits"] == [1, 3]
    assert result["loaded"] == []  # nothing optional was imported on the way
    runs = result["runs"]
    for ok in ("help", "version", "info"):
        assert runs[ok]["code"] == 0, runs[ok]
    assert runs["version"]["out"].strip() == f"coat {coat.__version__}"
    assert "coat_lite_tiny" in runs["info"]["out"]
    expected = {"train": "train", "eval": "plots", "export": "export", "explain": "plots", "detect_train": "detect"}
    for command, extra in expected.items():
        run = runs[command]
        assert run["code"] == 2, run
        lines = run["err"].strip().splitlines()
        assert len(lines) == 1 and lines[0].endswith(install_line(extra)), run["err"]
    assert not (tmp_path / "run").exists()  # stopped before writing anything


def test_embedded_data_names_the_demo_extra(monkeypatch):
    from coat.data.datasets import embedded_splits
    from coat.extras import MissingExtraError

    monkeypatch.setitem(sys.modules, "mlxtend", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'coat-pytorch\[demo\]'"):
        embedded_splits(None, None)


def _installed_closure(requirements: list[str]) -> set[str]:
    """The distributions ``requirements`` name and every distribution they need, as installed here, following
    the extras each requirement asks for (torch needs ``cuda-toolkit[cublas,...]``: the CUDA libraries)."""
    seen: set[str] = set()
    visited: set[tuple[str, frozenset[str]]] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        requirement = todo.pop()
        name, extras = canonicalize_name(requirement.name), frozenset(requirement.extras)
        if (name, extras) in visited:
            continue
        visited.add((name, extras))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen.add(name)
        for needed in map(Requirement, dist.requires or []):
            if needed.marker is None or any(needed.marker.evaluate({"extra": extra}) for extra in extras | {""}):
                todo.append(needed)
    return seen


def _extra_requirements(extra: str) -> list[str]:
    """What ``pip install coat-pytorch[extra]`` adds, with our self-references (``coat-pytorch[a,b]``) expanded."""
    requirements = []
    for requirement in PYPROJECT["project"]["optional-dependencies"][extra]:
        parsed = Requirement(requirement)
        if parsed.name == "coat-pytorch":
            for inner in parsed.extras:
                requirements += _extra_requirements(inner)
        else:
            requirements.append(requirement)
    return requirements


def _link_installed(venv: Path, requirements: list[str], label: str) -> None:
    """Make the installed distributions ``requirements`` name (and what they need) visible to a fresh venv: a .pth
    file pointing at symlinks, so the wheel test copies nothing; pip sees those distributions as installed."""
    shared = venv / label
    shared.mkdir()
    for name in _installed_closure(requirements):
        dist = metadata.distribution(name)
        for top in {Path(str(f)).parts[0] for f in dist.files or []}:
            source = Path(dist.locate_file(top))
            if source.exists() and not (shared / top).exists() and top not in ("..", "bin"):
                (shared / top).symlink_to(source)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / f"{label}.pth").write_text(str(shared) + "\n")


def _run(args: list, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=600, **kwargs)
    assert done.returncode == 0, f"{args}: {done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done


WHEEL_SMOKE = textwrap.dedent("""
    import sys, torch, coat
    assert coat.__file__.startswith(sys.prefix), coat.__file__  # the installed wheel, not the source tree
    model = coat.create_model("coat_lite_tiny", num_classes=4).eval()
    with torch.no_grad():
        print(tuple(model(torch.randn(2, 3, 64, 64)).shape))
""")


@pytest.mark.slow
def test_wheel_installs_and_runs_in_a_fresh_venv(tmp_path):
    """python -m build, then the slim core and [all] in a new venv: import, forward, coat info, coat --version."""
    _run([sys.executable, "-m", "build", "--wheel", "--outdir", tmp_path / "dist", ROOT])
    wheel = next((tmp_path / "dist").glob("coat_pytorch-*.whl"))
    assert wheel.name.startswith(f"coat_pytorch-{coat.__version__}-")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])  # this pip installs into it (--python)
    # The core's dependencies as installed here (several GB of CUDA-build torch among them), not copied: pip checks
    # their versions against the wheel's and installs only what is missing or too old.
    _link_installed(venv, PYPROJECT["project"]["dependencies"], "core")
    python, coat_cli = venv / "bin" / "python", venv / "bin" / "coat"
    pip = [sys.executable, "-m", "pip", "--python", python]
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)
    _run([*pip, "install", "-q", wheel], env=env, cwd=tmp_path)
    for extra_module in OPTIONAL_MODULES:  # the slim core brought none of the extras
        check = subprocess.run([python, "-c", f"import {extra_module}"], capture_output=True, cwd=tmp_path)
        assert check.returncode != 0, f"{extra_module} came with the slim core"
    assert _run([python, "-c", WHEEL_SMOKE], env=env, cwd=tmp_path).stdout.strip() == "(2, 4)"
    # the console script (each start imports torch: one call of each kind)
    assert "coat_lite_tiny" in _run([coat_cli, "info", "coat_lite_tiny"], env=env, cwd=tmp_path).stdout
    # [all]: the extras as installed here, likewise
    _link_installed(venv, _extra_requirements("all"), "extras")
    _run([*pip, "install", "-q", f"{wheel}[all]"], env=env, cwd=tmp_path)
    with_extras = "import matplotlib, tensorboard, pycocotools, onnx, onnxruntime, onnxscript, openvino, mlxtend\n"
    with_extras += WHEEL_SMOKE
    assert _run([python, "-c", with_extras], env=env, cwd=tmp_path).stdout.strip() == "(2, 4)"
    assert _run([coat_cli, "--version"], env=env, cwd=tmp_path).stdout.strip() == f"coat {coat.__version__}"
