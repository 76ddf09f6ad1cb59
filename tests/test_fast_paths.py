"""The speed seam: which implementation runs, fast paths equal to the reference, and what tools see."""

import contextlib
import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import coat
from coat import fast
from coat.fast import cpu_bf16, cpu_inference, cpu_training, onnx_export
from coat.fast.kernels import Kernels
from coat.fast.path import cpu_has_native_bf16
from coat.fast.small_grid_conv import depthwise_conv_tokens, runs_as_tap_matrices
from coat.fast.trunk import run_trunk
from coat.fast.weight_forms import FormCache, signature
from conftest import small_coscale_model

ALL = coat.list_models()


def chosen(model, x):
    """Name of the implementation the seam picks for ``model(x)`` in the current modes."""
    return fast.choose(model, x).name


def test_the_seam_picks_a_path_only_where_it_was_measured():
    model = coat.create_model("coat_tiny", num_classes=3).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert chosen(model, x) == "cpu_inference"
        with fast.only():
            assert chosen(model, x) == "reference"
        with fast.only("cpu_training"):
            assert chosen(model, x) == "reference"
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert chosen(model, x) == ("cpu_bf16_autocast" if cpu_has_native_bf16() else "reference")
        with torch.autocast("cpu", dtype=torch.float16):
            assert chosen(model, x) == "reference"
        with FlopCounterMode(display=False):
            assert chosen(model, x) == "reference"
        assert chosen(model.double(), x.double()) == "reference"
        model.float()
        model.train()
        assert chosen(model, x) == "reference"  # no-grad forward in training mode (drop path would be on)
    assert chosen(model, x) == "cpu_training"
    assert chosen(model, torch.randn(1, 3, 32, 64)) == "cpu_training_small"  # 8x16 stage-1 tokens
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert chosen(model, torch.randn(1, 3, 32, 64)) == "cpu_training_small"  # bf16 autocast too
        assert chosen(model, x) == "reference"
    model.eval()
    assert chosen(model, x) == "cpu_training"  # e.g. Grad-CAM: eval mode with autograd
    with torch.no_grad():
        handle = model.stages[2].blocks[0].attn.register_forward_hook(lambda *args: None)
        assert chosen(model, x) == "reference"
        handle.remove()
        assert chosen(model, x) == "cpu_inference"
        attention_mode = coat.create_model("coat_tiny", num_classes=3, coscale="attention").eval()
        assert chosen(attention_mode, x) == "reference"
    with pytest.raises(ValueError, match="unknown fast paths"), fast.only("gpu_magic"):
        pass


def test_the_seam_says_why_the_reference_runs():
    model = coat.create_model("coat_lite_tiny", num_classes=3).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert fast.choose(model, x).reason == "every condition of the path holds"
        with torch.autocast("cpu", dtype=torch.float16):
            reason = fast.choose(model, x).reason
        assert "cpu_inference needs no CPU autocast" in reason and "cpu_training needs autograd on" in reason
        if cpu_has_native_bf16():
            assert "cpu_bf16_autocast needs CPU autocast to bf16" in reason
        with FlopCounterMode(display=False):
            assert "TorchDispatchMode" in fast.choose(model, x).reason
        with fast.only():
            assert "switched off" in fast.choose(model, x).reason
        handle = model.stages[0].blocks[1].mlp.register_forward_pre_hook(lambda *args: None)
        assert "hooks" in fast.choose(model, x).reason
        handle.remove()
    model.train()
    with fast.only("cpu_training"):
        assert "cpu_training needs 256+ stage-1 tokens" in fast.choose(model, torch.randn(1, 3, 32, 32)).reason
    with fast.only("cpu_training_small"):
        assert "cpu_training_small needs under 256 stage-1 tokens" in fast.choose(model, x).reason
    attention_mode = coat.create_model("coat_tiny", num_classes=3, coscale="attention").eval()
    with torch.no_grad():
        assert "coscale in ('interpolate',) only, not 'attention'" in fast.choose(attention_mode, x).reason


def test_hooks_on_containers_that_never_run_leave_the_fast_path_on():
    """ptflops leaves forward hooks on model.stages and model.parallel_blocks (ModuleLists, never called)."""
    model = coat.create_model("coat_tiny", num_classes=3).eval()
    handles = [
        m.register_forward_hook(lambda *args: None)
        for m in (model.stages, model.parallel_blocks, model.stages[1].blocks, model.parallel_blocks[0].attns)
    ]
    with torch.no_grad():
        assert chosen(model, torch.randn(1, 3, 64, 64)) == "cpu_inference"
    for handle in handles:
        handle.remove()


@pytest.mark.parametrize("path", fast.FAST_PATHS, ids=lambda path: path.name)
def test_every_path_declares_every_config_field(path):
    """A CoaTConfig field no path has declared fails here: declare in each path which values its kernels run."""
    assert set(path.config) == {field.name for field in dataclasses.fields(coat.CoaTConfig)}


def test_a_field_a_path_was_not_written_for_runs_the_reference(monkeypatch):
    undeclared = dataclasses.replace(
        cpu_inference.PATH,
        config={name: values for name, values in cpu_inference.PATH.config.items() if name != "qkv_bias"},
    )
    monkeypatch.setattr(fast, "FAST_PATHS", (undeclared,))
    model = coat.create_model("coat_lite_tiny", num_classes=3).eval()
    with torch.no_grad():
        choice = fast.choose(model, torch.randn(1, 3, 64, 64))
    assert choice.name == "reference" and "not written for CoaTConfig.qkv_bias" in choice.reason


@pytest.mark.parametrize("name", ["coat_lite_tiny", "coat_tiny"])
def test_the_trunk_with_default_kernels_is_the_reference(name):
    """trunk.run_trunk states the reference's order of work: with the reference's kernels it gives its numbers."""
    model = coat.create_model(name, num_classes=3, drop_path_rate=0.1).train()
    x = torch.randn(2, 3, 64, 96)
    torch.manual_seed(1)
    trunk_tokens, trunk_grids = run_trunk(model, x, Kernels())
    torch.manual_seed(1)  # the same drop-path draws
    reference_tokens, reference_grids = model.reference_tokens(x)
    assert trunk_grids == reference_grids
    for a, b in zip(trunk_tokens, reference_tokens):
        assert (a - b).abs().max() <= 1e-5 * b.abs().max()


@pytest.mark.parametrize("chunk_elements", [2**20, 1], ids=["whole-batch", "one-sample-chunks"])
@pytest.mark.parametrize("name", ALL)
def test_inference_path_equals_reference(name, chunk_elements, monkeypatch):
    monkeypatch.setattr(cpu_inference, "CHUNK_ELEMENTS", chunk_elements)
    model = coat.create_model(name, num_classes=10).eval()
    x = torch.randn(3, 3, 161, 131)  # odd size; 40x32 stage-1 tokens: the head-slices branch too
    with torch.no_grad():
        assert chosen(model, x) == "cpu_inference"
        fast_logits, fast_maps = model(x), model.forward_intermediates(x, intermediates_only=True)
        with fast.only():
            reference_logits, reference_maps = model(x), model.forward_intermediates(x, intermediates_only=True)
    for a, b in zip([fast_logits, *fast_maps], [reference_logits, *reference_maps]):
        assert (a - b).abs().max() <= 1e-5 * b.abs().max()  # float32 round-off (deep random models reach 1e4)


needs_mkldnn_bf16 = pytest.mark.skipif(
    not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="oneDNN has no bf16 kernels on this CPU"
)


def _bf16_logits(model, x):
    """Logits of a bf16 copy of ``model`` on the seam's ``cpu_bf16`` kernels, run directly (any CPU with oneDNN's
    bf16), and on the reference modules in bf16."""
    bf16_model, x = copy.deepcopy(model).to(torch.bfloat16), x.to(torch.bfloat16)
    with torch.no_grad():
        path = bf16_model.forward_head(bf16_model.head_features(cpu_bf16.PATH.tokens(bf16_model, x)[0]))
        with fast.only():
            reference = bf16_model(x)
    return path.float(), reference.float()


@needs_mkldnn_bf16
@pytest.mark.parametrize("name", ALL)
def test_bf16_path_is_the_reference_within_bf16_round_off(name):
    """The ``cpu_bf16`` kernels on every variant (odd size: CRPE's padding, resizes between scales): as close to
    the float32 logits as the reference modules in bf16 are."""
    torch.manual_seed(0)
    model = coat.create_model(name, num_classes=10).eval()
    x = torch.randn(3, 3, 161, 131)
    with torch.no_grad():
        expected = model(x)
    path, reference = _bf16_logits(model, x)
    scale = expected.abs().max()
    assert (path - expected).abs().max() <= 1.5 * (reference - expected).abs().max() + 0.01 * scale


@needs_mkldnn_bf16
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name", ALL)
def test_bf16_autocast_path_is_within_bf16_round_off(name, batch):
    """The ``cpu_bf16`` kernels for a float32 model under CPU bf16 autocast (run directly: any CPU with oneDNN's
    bf16): bf16 logits as close to float32's as the reference modules' under autocast are."""
    torch.manual_seed(0)
    model = coat.create_model(name, num_classes=10).eval()
    x = torch.randn(batch, 3, 161, 131)
    with torch.no_grad():
        expected = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            path = model.forward_head(model.head_features(cpu_bf16.AUTOCAST_PATH.tokens(model, x)[0]))
            with fast.only():
                reference = model(x)
    assert path.dtype == reference.dtype == torch.bfloat16
    error, reference_error = (path.float() - expected).abs().max(), (reference.float() - expected).abs().max()
    assert error <= 1.5 * reference_error + 0.01 * expected.abs().max()


@needs_mkldnn_bf16
def test_bf16_autocast_path_sees_every_change_of_the_weights():
    """The bf16 copy it runs is made again after a weight changes in place or is replaced."""
    model = coat.create_model("coat_lite_tiny", num_classes=3).eval()
    x = torch.randn(2, 3, 64, 64)

    def logits(of=model):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return of.forward_head(of.head_features(cpu_bf16.AUTOCAST_PATH.tokens(of, x)[0])).float()

    before = logits()
    with torch.no_grad():
        model.stages[0].patch_embed.proj.weight.mul_(2)
    changed = logits()
    assert not torch.equal(before, changed) and torch.equal(changed, logits(copy.deepcopy(model)))  # a new copy
    fc2 = model.stages[3].blocks[0].mlp.fc2
    fc2.weight = torch.nn.Parameter(torch.zeros_like(fc2.weight))
    assert torch.equal(logits(), logits(copy.deepcopy(model)))
    before = logits()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)  # moves no version counter (torch 2.14)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    changed = logits()
    assert not torch.equal(before, changed) and torch.equal(changed, logits(copy.deepcopy(model)))
    assert all(p.grad is None for p in cpu_bf16.bf16_copy(model).parameters())  # the copy leaves gradients out


def test_forms_of_the_weights_are_made_again_after_any_change():
    weight = torch.nn.Parameter(torch.randn(3, 3))
    forms = FormCache(lambda w: [w], lambda w: w.detach().clone())
    first = forms(weight)
    assert forms(weight) is first  # kept while unchanged
    with torch.no_grad():
        weight.mul_(2)
    assert torch.equal(forms(weight), weight)
    weight.grad = torch.ones_like(weight)
    torch.optim.AdamW([weight], lr=0.1, fused=True).step()
    assert torch.equal(forms(weight), weight)  # a fused step moves no version counter: the step count tells
    with torch.inference_mode():
        made_there = torch.randn(3)
    assert signature([made_there]) is None and forms(made_there) is not forms(made_there)  # no versions: every call


@needs_mkldnn_bf16
@pytest.mark.parametrize("variant", ["coat_lite_tiny", "coat_tiny"])
def test_bf16_path_keeps_the_fixtures_top_classes(variant, authors_checkpoint):
    from test_parity import fixture

    expected = fixture(variant)
    model = coat.create_model(variant, pretrained=authors_checkpoint(variant)).eval()
    path, _ = _bf16_logits(model, expected["input"])
    assert torch.equal(path.argmax(-1), expected["logits"].argmax(-1))
    assert (path - expected["logits"]).abs().max() <= 0.03 * expected["logits"].abs().max()


def test_bf16_models_take_the_bf16_path_on_amx_cpus_only():
    model = coat.create_model("coat_lite_tiny", num_classes=3).eval().to(torch.bfloat16)
    x = torch.randn(1, 3, 64, 64, dtype=torch.bfloat16)
    with torch.no_grad():
        choice = fast.choose(model, x)
        if cpu_has_native_bf16():
            assert choice.name == "cpu_bf16"
        else:
            assert choice.name == "reference" and "cpu_bf16 needs a CPU with AMX or AVX-512 BF16" in choice.reason
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert chosen(model, x) == "reference"
    assert chosen(model, x) != "cpu_bf16"  # autograd on


@needs_mkldnn_bf16
def test_bf16_path_sees_weights_changed_in_place():
    """Its packed copies of the linear weights follow updates (load_state_dict, optimizer steps)."""
    torch.manual_seed(0)
    model = coat.create_model("coat_lite_tiny", num_classes=4).eval().to(torch.bfloat16)
    x = torch.randn(2, 3, 64, 64, dtype=torch.bfloat16)
    with torch.no_grad():
        before, _ = cpu_bf16.PATH.tokens(model, x)
        model.stages[3].blocks[0].mlp.fc2.weight.mul_(3)
        model.stages[3].blocks[0].attn.qkv.weight.mul_(-1)
        after, _ = cpu_bf16.PATH.tokens(model, x)
        with fast.only():
            reference, _ = model.reference_tokens(x)
    assert not torch.allclose(before[3], after[3])
    scale = reference[3].abs().max()
    assert (after[3] - reference[3]).abs().max() <= 0.05 * scale


@needs_mkldnn_bf16
def test_bf16_path_runs_a_model_made_in_inference_mode():
    """Weights made under ``torch.inference_mode`` have no version counter: packed on every call instead."""
    torch.manual_seed(0)
    with torch.inference_mode():
        model = coat.create_model("coat_tiny", num_classes=4).eval().to(torch.bfloat16)
        x = torch.randn(2, 3, 64, 64, dtype=torch.bfloat16)
        cpu_bf16.PATH.tokens(model, x)  # a first call: nothing it packed may serve the second
        model.stages[3].blocks[0].mlp.fc2.weight.mul_(3)  # changed in place, untracked
        model.stages[1].crpe.convs[0].weight.mul_(-1)
        changed, _ = cpu_bf16.PATH.tokens(model, x)
        with fast.only():
            reference, _ = model.reference_tokens(x)
    for ours, expected in zip(changed, reference):
        assert (ours - expected).abs().max() <= 0.05 * expected.abs().max()


@pytest.mark.parametrize("name", ALL)
def test_onnx_export_path_equals_reference(name):
    """The graph ONNX export writes (run eagerly here) is the reference's math."""
    model = coat.create_model(name, num_classes=10).eval()
    x = torch.randn(2, 3, 97, 131)  # odd size: CRPE's padding and the resizes between scales
    with torch.no_grad():
        path_tokens, path_grids = onnx_export.PATH.tokens(model, x)
        reference_tokens, reference_grids = model.reference_tokens(x)
    assert path_grids == reference_grids
    for a, b in zip(path_tokens, reference_tokens):
        assert (a - b).abs().max() <= 1e-5 * b.abs().max()


def test_onnx_export_writes_the_onnx_export_path_unless_hooks_or_only_say_otherwise(monkeypatch):
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    model = coat.create_model("coat_tiny", num_classes=3).eval()
    x = torch.randn(1, 3, 64, 64)
    assert chosen(model, x) == "onnx_export"
    with fast.only():
        assert "onnx_export is not enabled" in fast.choose(model, x).reason
    handle = model.stages[1].blocks[0].mlp.register_forward_hook(lambda *args: None)
    assert "hooks" in fast.choose(model, x).reason
    handle.remove()
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: False)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):  # no path serves: each says why
        assert "onnx_export needs ONNX export" in fast.choose(model, x).reason  # never outside an export


@pytest.mark.parametrize("recompute", [True, False], ids=["recomputing-mlp", "plain-autograd-mlp"])
@pytest.mark.parametrize("name", ALL)
def test_training_path_equals_reference_values_and_gradients(name, recompute, monkeypatch):
    monkeypatch.setattr(cpu_training, "RECOMPUTE_MIN_HIDDEN_ELEMENTS", 0 if recompute else 2**62)
    # 18x24 stage-1 tokens; stage 4's 2x3 grid is narrower than CPE's and CRPE's windows (tap matrices)
    assert_training_path_equals_reference(name, torch.randn(2, 3, 75, 97), "cpu_training")


@pytest.mark.parametrize("name", ALL)
def test_small_images_training_path_equals_reference_values_and_gradients(name):
    # grids 8x12, 4x6, 2x3, 1x1: stages 3 and 4 on tap matrices, stages 1 and 2 on convolutions
    assert_training_path_equals_reference(name, torch.randn(2, 3, 32, 48), "cpu_training_small")


def assert_training_path_equals_reference(name, x, path):
    """Loss, input gradient and every weight's gradient of ``path`` equal the reference's (a training step)."""
    model = coat.create_model(name, num_classes=10, drop_path_rate=0.1).train()

    def step():
        model.zero_grad()
        image = x.clone().requires_grad_()
        torch.manual_seed(1)  # the same drop-path draws on both paths
        loss = model(image).square().sum()
        loss.backward()
        return loss, image.grad, {n: p.grad for n, p in model.named_parameters()}

    assert chosen(model, x) == path
    fast_loss, fast_input_grad, fast_grads = step()
    with fast.only():
        reference_loss, reference_input_grad, reference_grads = step()
    assert torch.allclose(fast_loss, reference_loss, rtol=1e-5)
    assert torch.allclose(fast_input_grad, reference_input_grad, atol=1e-6, rtol=1e-4)
    for n, grad in reference_grads.items():  # float32 sums in another order: within 1e-4 of the tensor's scale
        assert (fast_grads[n] - grad).abs().max() <= 1e-4 * grad.abs().max() + 1e-7, n


@pytest.mark.parametrize("name", ALL)
def test_small_images_training_path_under_bf16_autocast_is_within_bf16_round_off(name):
    """Under CPU bf16 autocast (tap matrices also on stage 1's 8x8 grid and stage 2's 4x4): every gradient as close
    to float32's as the reference modules' under autocast are (3x their error, plus 1% of the tensor's scale)."""
    model = coat.create_model(name, num_classes=10, drop_path_rate=0.1).train()
    x = torch.randn(2, 3, 32, 32)

    def step(bf16: bool, reference: bool) -> dict[str, torch.Tensor]:
        model.zero_grad()
        image = x.clone().requires_grad_()
        torch.manual_seed(1)  # the same drop-path draws on every run
        with fast.only() if reference else contextlib.nullcontext(), torch.autocast("cpu", enabled=bf16):
            loss = model(image).float().square().sum()
        loss.backward()
        return {"loss": loss.detach(), "input": image.grad, **{n: p.grad for n, p in model.named_parameters()}}

    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert chosen(model, x) == "cpu_training_small"
    exact, path, reference = step(False, True), step(True, False), step(True, True)
    for n, value in exact.items():
        reference_error = (reference[n] - value).abs().max()
        assert (path[n] - value).abs().max() <= 3 * reference_error + 0.01 * value.abs().max(), n


@pytest.mark.parametrize(
    ("grid", "kernel_size"),
    [((1, 1), 3), ((1, 1), 7), ((2, 2), 3), ((2, 3), 5), ((4, 4), 7), ((1, 4), 3), ((8, 8), 5), ((6, 8), 7)],
)
def test_tap_matrices_are_the_depthwise_convolution(grid, kernel_size):
    """Both forms (a broadcast product up to 4 tokens, a batched product above) equal ``conv2d``."""
    x = torch.randn(3, grid[0] * grid[1], 5, dtype=torch.double, requires_grad=True)  # image tokens [B, H*W, C]
    weight = torch.randn(5, 1, kernel_size, kernel_size, dtype=torch.double, requires_grad=True)
    bias = torch.randn(5, dtype=torch.double, requires_grad=True)
    image = x.transpose(1, 2).unflatten(2, grid)  # [B, C, H, W]
    expected = F.conv2d(image, weight, bias, padding=kernel_size // 2, groups=5).flatten(2).transpose(1, 2)
    assert torch.allclose(depthwise_conv_tokens(x, weight, bias, grid), expected)
    assert torch.autograd.gradcheck(lambda *args: depthwise_conv_tokens(*args, grid), (x, weight, bias))


def test_only_grids_narrower_than_the_kernel_run_as_tap_matrices():
    assert not runs_as_tap_matrices(3, (4, 4))  # oneDNN's backward is fast where the kernel fits
    assert not runs_as_tap_matrices(7, (8, 8))
    assert not runs_as_tap_matrices(7, (3, 6))  # 18 tokens: above FLOAT32_MAX_TOKENS
    assert runs_as_tap_matrices(5, (4, 4)) and runs_as_tap_matrices(3, (2, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # oneDNN's bf16 backward is slow for windows of 5+ too
        assert runs_as_tap_matrices(7, (8, 8)) and runs_as_tap_matrices(5, (4, 4)) and runs_as_tap_matrices(3, (1, 1))
        assert not runs_as_tap_matrices(3, (4, 4)) and not runs_as_tap_matrices(7, (8, 9))  # 72 tokens


@pytest.mark.parametrize("name", ALL)
def test_flop_counter_on_a_cpu_eval_forward_gives_the_papers_gmacs(name):
    model = coat.create_model(name).eval()
    size = coat.VARIANTS[name].input_size
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, size, size))
    assert counter.get_total_flops() / 2e9 == pytest.approx(coat.VARIANTS[name].gmacs, rel=0.02)


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("name", ["coat_lite_tiny", "coat_tiny"])
def test_hooks_and_callers_hold_tensors_that_do_not_change(name, grad):
    model = coat.create_model(name, num_classes=4).eval()
    x = torch.randn(2, 3, 64, 96)
    x_before = x.clone()
    captured = []
    modules = [*model.stages, model.stages[1].blocks[0], model.stages[1].cpe, model.stages[1].crpe]
    handles = [m.register_forward_hook(lambda m, args, out: captured.append((m, out, _clone(out)))) for m in modules]
    with torch.set_grad_enabled(grad):
        model(x)
    for handle in handles:
        handle.remove()
    assert {id(m) for m, _, _ in captured} == {id(m) for m in modules}  # every hook fired
    for _, held, copy_at_hook_time in captured:
        assert all(torch.equal(a, b) for a, b in zip(_tensors(held), _tensors(copy_at_hook_time)))
    assert torch.equal(x, x_before)  # the caller's images are never written


def _tensors(out):
    return [t for t in (out if isinstance(out, tuple) else (out,)) if isinstance(t, torch.Tensor)]


def _clone(out):
    return tuple(t.detach().clone() for t in _tensors(out))


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
def test_fast_paths_never_write_into_the_input(grad):
    model = coat.create_model("coat_tiny", num_classes=4).eval()
    x = torch.randn(2, 3, 64, 64)
    x_before = x.clone()
    with torch.set_grad_enabled(grad):
        model(x)
    assert torch.equal(x, x_before)


@pytest.fixture
def fresh_compiler():
    """``torch.compile``'s caches emptied before and after: every model, dtype and size of a test recompiles
    ``CoaT.forward``, and dynamo stops at 8 compilations of one function per process (fullgraph: an error)."""
    torch.compiler.reset()
    yield
    torch.compiler.reset()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_cpu_inference_runs_the_registered_operator_with_the_models_own_weights(
    monkeypatch, dtype, fresh_compiler
):
    """``cpu_inference`` (float32) and ``cpu_bf16`` (a bf16 model, on CPUs with native bf16) run inside
    ``torch.compile`` as the registered operator, on the weights of the model compiled."""
    calls = []
    eager_blocks = cpu_inference.InferenceKernels.run_blocks  # cpu_bf16's kernels inherit it
    monkeypatch.setattr(
        cpu_inference.InferenceKernels,
        "run_blocks",
        lambda self, stage, x, block: calls.append(x.shape) or eager_blocks(self, stage, x, block),
    )
    model = coat.create_model("coat_lite_tiny", num_classes=10).eval().to(dtype)
    changed = copy.deepcopy(model)
    operator_serves = dtype == torch.float32 or cpu_has_native_bf16()
    with torch.no_grad():
        for p in changed.parameters():
            p.mul_(1.1)
        for size in [(64, 64), (64, 96)]:  # the second size recompiles with dynamic shapes
            x = torch.randn(2, 3, *size, dtype=dtype)
            for m in (model, changed):
                with fast.only():
                    expected = m(x)
                eager = m(x)
                calls.clear()
                compiled = torch.compile(m, fullgraph=True)(x)  # one registered operator: no graph break
                assert bool(calls) == operator_serves  # the eager fast path ran inside the compiled model
                if dtype == torch.float32:
                    assert torch.allclose(compiled, expected, atol=1e-5)
                elif operator_serves:
                    assert torch.equal(compiled, eager)  # the eager path's own numbers
                else:  # Inductor's code for the reference modules, within bf16's round-off
                    assert (compiled - expected).abs().max() < 0.05 * expected.abs().max()


@pytest.mark.parametrize(
    "variant, path",
    [
        ("coat_lite_tiny", "cpu_inference"),
        ("coat_tiny", "cpu_inference"),
        pytest.param("coat_lite_tiny", "reference", marks=pytest.mark.slow),  # Inductor compiles the modules: ~40 s
    ],
)
def test_compiled_model_reproduces_the_fixture_logits(variant, path, authors_checkpoint, fresh_compiler):
    from test_parity import TOL, fixture

    model = coat.create_model(variant, pretrained=authors_checkpoint(variant)).eval()
    expected = fixture(variant)
    with torch.no_grad(), fast.only(*[name for name in [path] if name != "reference"]):
        logits = torch.compile(model, fullgraph=True)(expected["input"])
    assert (logits - expected["logits"]).abs().max().item() < TOL


def test_bf16_training_captures_as_one_graph():
    """What trains on GPUs (bf16 autocast: the reference modules) is captured by dynamo with fullgraph=True
    (no graph break); checked on CPU without code generation (a narrow co-scale CoaT: every module kind)."""
    model = small_coscale_model(10).train()
    x = torch.randn(2, 3, 64, 96)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.compile(model, fullgraph=True, backend="eager")(x).float().square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_tiled_mlp_backward_is_exact():
    from coat.fast.tiled_mlp import NormMlpFunction

    def leaf(*shape):
        return torch.randn(*shape, dtype=torch.double, requires_grad=True)

    rows, dim, hidden = 10, 4, 8  # 3 rows per tile: four tiles, the last one short
    norm = (leaf(dim), leaf(dim))
    fc1, fc2 = (leaf(hidden, dim), leaf(hidden)), (leaf(dim, hidden), leaf(dim))
    inputs = (leaf(rows, dim), *norm, *fc1, *fc2, 1e-6, 3)
    assert torch.autograd.gradcheck(NormMlpFunction.apply, inputs)


def test_grouped_depthwise_conv_backward_is_exact():
    from coat.fast.grouped_conv import GroupedDepthwiseConv

    def leaf(*shape):
        return torch.randn(*shape, dtype=torch.double, requires_grad=True)

    weights = [leaf(2, 1, 3, 3), leaf(3, 1, 5, 5), leaf(3, 1, 7, 7)]  # CRPE's three windows
    biases = [leaf(w.shape[0]) for w in weights]

    def crpe_of_values(qkv, *weights_then_biases):  # values: a strided view behind the CLS token, as in CRPE
        values = qkv[:, 1:, 16:].transpose(1, 2).unflatten(2, (4, 5))  # [2, 8, 4, 5]
        return GroupedDepthwiseConv.apply(values, *weights_then_biases)

    assert torch.autograd.gradcheck(crpe_of_values, (leaf(2, 21, 24), *weights, *biases))


@pytest.mark.parametrize("recompute", [True, False], ids=["recomputing-mlp", "plain-autograd-mlp"])
@pytest.mark.parametrize("name", ["coat_lite_tiny", "coat_tiny"])
def test_training_gradients_equal_timm(name, recompute, speed_path, monkeypatch):
    pytest.importorskip("timm")
    monkeypatch.setattr(cpu_training, "RECOMPUTE_MIN_HIDDEN_ELEMENTS", 0 if recompute else 2**62)
    from coat.bench import timm_pair
    from coat.checkpoint import authors_to_coat

    ours, peer = timm_pair(name, num_classes=10, img_size=(64, 96))
    x = torch.randn(2, 3, 64, 96)
    for model in (ours, peer):
        model.train()
        model(x).square().sum().backward()
    peer_grads, _ = authors_to_coat({n: p.grad for n, p in peer.named_parameters()})
    for n, p in ours.named_parameters():
        assert torch.allclose(p.grad, peer_grads[n], atol=1e-5, rtol=1e-4), n
