"""The recipe pieces: configuration, optimiser groups, schedule, sampler, transforms, mixing."""

import contextlib
import math

import pytest
import torch
import yaml

import coat
from coat.data.preprocessing import Preprocessing
from coat.data.transforms import EachImage, batch_mixing, crop_transform, pixel_transform, train_transform
from coat.train.config import TrainConfig, resolve, to_yaml
from coat.train.distributed import DistInfo, RepeatedAugSampler, ShardSampler, sync_batch_norm
from coat.train.optim import build_optimizer, param_groups, warmup_cosine


def test_recipe_defaults_follow_the_data():
    assert resolve({}).recipe == "digits"
    imagenet = resolve({"data": "/some/folder"})
    assert imagenet.recipe == "imagenet"
    assert (imagenet.mixup, imagenet.cutmix, imagenet.label_smoothing, imagenet.ema_decay) == (0.8, 1.0, 0.1, 0.99996)
    assert (imagenet.warmup_epochs, imagenet.weight_decay, imagenet.repeated_aug, imagenet.drop_path) == (
        5,
        0.05,
        3,
        0.1,
    )


def test_per_variant_imagenet_settings():
    small = resolve({"data": "d", "model": "coat_small"})
    assert (small.drop_path, small.warmup_epochs, small.clip_grad) == (0.2, 20, 5.0)
    medium = resolve({"data": "d", "model": "coat_lite_medium"})
    assert (medium.drop_path, medium.warmup_epochs) == (0.3, 20)


def test_yaml_then_flags_override_recipe(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"epochs": 7, "lr": 0.01, "hflip": 0.5}))
    config = resolve({"epochs": 3, "hflip": None}, str(path))
    assert config.epochs == 3 and config.lr == 0.01 and config.hflip == 0.5
    assert yaml.safe_load(to_yaml(config))["epochs"] == 3


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"recipe": "fast"}, "unknown recipe"),
        ({"model": "vit"}, "unknown model"),
        ({"input_size": 16}, "at least 32"),
        ({"epochs": 0}, "positive"),
        ({"workers": -1}, "--workers must be 0"),
        ({"seed": -3}, "--seed must be 0"),
    ],
)
def test_bad_options(bad, match):
    with pytest.raises(ValueError, match=match):
        resolve(bad)


def test_unknown_yaml_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochz: 3\n")
    with pytest.raises(ValueError, match="unknown options"):
        resolve({}, str(path))


@pytest.mark.parametrize("name", ["coat_lite_tiny", "coat_tiny"])
def test_no_weight_decay_on_norms_biases_cls_tokens(name):
    model = coat.create_model(name, num_classes=3)
    decay, no_decay = param_groups(model, 0.05)
    decayed = {id(p) for p in decay["params"]}
    for pname, p in model.named_parameters():
        expect_no_decay = p.ndim <= 1 or pname.endswith("cls_token")
        assert (id(p) not in decayed) == expect_no_decay, pname
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.05


def test_warmup_cosine_schedule():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=1.0)
    schedule = warmup_cosine(optimizer, peak_lr=1.0, warmup_lr=0.0, min_lr=0.1, warmup_steps=10, total_steps=110)
    lrs = []
    for _ in range(110):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.5) and lrs[10] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)


def test_repeated_augmentation_sampler():
    ranks = [RepeatedAugSampler(10, DistInfo(r, 3), repeats=3, seed=1) for r in range(3)]
    for s in ranks:
        s.set_epoch(2)
    lists = [list(s) for s in ranks]
    assert all(len(x) == 4 for x in lists)  # ceil(10 / 3) each
    # each image's repeats land on different processes: the first 12 slots hold 4 images x 3
    first = sorted(i for x in lists for i in x)
    assert len(set(first)) == 4 and all(first.count(i) == 3 for i in set(first))
    again = RepeatedAugSampler(10, DistInfo(0, 3), repeats=3, seed=1)
    again.set_epoch(2)
    assert list(again) == lists[0]
    single = RepeatedAugSampler(10, DistInfo(), repeats=1)
    assert sorted(single) == list(range(10))


@pytest.mark.parametrize(
    ("device", "info", "synced"),
    [("cuda", DistInfo(0, 2), True), ("cpu", DistInfo(0, 2), False), ("cuda", DistInfo(), False)],
)
def test_batch_norm_is_synchronised_only_under_ddp_on_cuda(device, info, synced):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Sequential(torch.nn.BatchNorm2d(4)))
    tensors, keys = [*model.parameters(), *model.buffers()], list(model.state_dict())
    converted = sync_batch_norm(model, torch.device(device), info)
    assert converted is model and isinstance(model[1][0], torch.nn.SyncBatchNorm) == synced
    assert all(a is b for a, b in zip([*model.parameters(), *model.buffers()], tensors, strict=True))
    assert list(model.state_dict()) == keys  # checkpoints load either way


def test_shard_sampler_covers_everything_once():
    shards = [list(ShardSampler(10, DistInfo(r, 3))) for r in range(3)]
    assert sorted(index for shard in shards for index in shard) == list(range(10))


def test_transforms_and_mixing():
    from PIL import Image

    image = Image.new("RGB", (50, 40), (120, 30, 200))
    t = train_transform(32, 0.08, 0.5, 9, 0.25, (0.5,) * 3, (0.5,) * 3)(image)
    assert t.shape == (3, 32, 32) and t.dtype == torch.float32
    e = Preprocessing(input_size=32, crop_pct=0.875, mean=(0.5,) * 3, std=(0.5,) * 3).transforms()(image)
    assert e.shape == (3, 32, 32)
    mix = batch_mixing(0.8, 1.0, num_classes=4)
    _images, targets = mix(torch.rand(6, 3, 32, 32), torch.tensor([0, 1, 2, 3, 0, 1]))
    assert targets.shape == (6, 4) and torch.allclose(targets.sum(1), torch.ones(6))
    assert batch_mixing(0, 0, 4) is None


def test_train_config_fields_are_all_flags():
    from coat.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["train", "--epochs", "2", "--no-amp", "--mean", "0.1", "0.2", "0.3"])
    assert args.epochs == 2 and args.amp is False and args.mean == [0.1, 0.2, 0.3]
    for name in TrainConfig.__dataclass_fields__:
        assert hasattr(args, name)


def test_optimizer_has_two_groups():
    optimizer = build_optimizer(coat.create_model("coat_lite_tiny"), 1e-3, 0.05)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.05, 0.0]


def test_lr_scales_split_groups_and_keep_the_peak_group_first():
    model = coat.create_model("coat_lite_tiny", num_classes=3)
    optimizer = build_optimizer(model, 1e-3, 0.05, {r"^stages\.0\.": 0.1, "head": 2.0})
    lr_of = {p: g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert optimizer.param_groups[0]["lr"] == 1e-3 and optimizer.param_groups[0]["weight_decay"] == 0.05
    for name, param in model.named_parameters():
        expected = 1e-4 if name.startswith("stages.0.") else 2e-3 if "head" in name else 1e-3
        assert lr_of[param] == pytest.approx(expected), name
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)  # a schedule scales every group's own lr
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx(
        [0.5 * g["initial_lr"] for g in optimizer.param_groups]
    )
    assert sorted({round(g["initial_lr"], 9) for g in optimizer.param_groups}) == [1e-4, 1e-3, 2e-3]


@pytest.mark.parametrize("name", ["coat_lite_tiny", "coat_tiny"])
def test_the_small_recipe_trains_the_last_stage_at_a_tenth_of_the_lr(name):
    from coat.train.classify import ClassificationTask

    config = resolve({"data": "folder", "recipe": "small", "model": name})
    model = coat.create_model(name, num_classes=3)
    optimizer = build_optimizer(model, 1e-3, 0.05, ClassificationTask(config).lr_scales(model))
    lr_of = {p: g["lr"] for g in optimizer.param_groups for p in g["params"]}
    for param_name, param in model.named_parameters():  # coat_tiny's parallel blocks are not the last stage
        assert lr_of[param] == pytest.approx(1e-4 if param_name.startswith("stages.3.") else 1e-3), param_name
    imagenet = resolve({"data": "folder", "model": name})
    assert ClassificationTask(imagenet).lr_scales(model) == {}  # the authors' recipe: one lr
    with pytest.raises(coat.errors.UsageError, match="--last-stage-lr-scale"):
        resolve({"data": "folder", "recipe": "small", "last_stage_lr_scale": -1.0})


def test_rotation_turns_the_image_and_zero_keeps_it():
    from PIL import Image

    pixels = torch.zeros(32, 32, 3, dtype=torch.uint8)
    pixels[4:28, 14:18] = 255  # a vertical bar
    image = Image.fromarray(pixels.numpy())
    plain = train_transform(32, 1.0, 0.0, 0, 0.0, (0.0,) * 3, (1.0,) * 3)(image)
    assert torch.allclose(plain, torch.from_numpy(pixels.numpy()).permute(2, 0, 1).float() / 255, atol=0.02)
    turned = train_transform(32, 1.0, 0.0, 0, 0.0, (0.0,) * 3, (1.0,) * 3, rotation=90)
    assert any(not torch.allclose(turned(image), plain, atol=0.1) for _ in range(5))


def test_embedded_data_is_augmented_by_batch():
    """The embedded set's recipe needs only crops and rotations: raw uint8 batches, one resampling per batch."""
    from coat.data.datasets import Preloaded
    from coat.train.classify import ClassificationTask
    from coat.train.config import resolve
    from coat.train.distributed import DistInfo
    from coat.train.loop import Runtime

    task = ClassificationTask(resolve({"batch_size": 16, "rotation": 10.0}))
    train, val = task.build_data(DistInfo(0, 1))
    images, targets, skipped = next(iter(train))
    assert images.dtype == torch.uint8 and images.shape == (16, 1, 28, 28) and skipped == 0
    assert isinstance(val.dataset, Preloaded) and val.dataset[0][0].shape == (3, 32, 32)
    model = task.build_model()
    runtime = Runtime(torch.device("cpu"), DistInfo(0, 1), contextlib.nullcontext())
    loss, count = task.batch_loss(model, (images, targets, 0), runtime)
    assert count == 16 and torch.isfinite(loss)
    assert "augmented by batch" in task.describe(runtime, 1e-3)
    per_image = ClassificationTask(resolve({"batch_size": 16, "hflip": 0.5}))  # a flip: the per-image path
    images, _, _ = next(iter(per_image.build_data(DistInfo(0, 1))[0]))
    assert images.dtype == torch.float32 and images.shape == (16, 3, 32, 32) and per_image.batch_transform is None


def test_crops_in_workers_then_pixels_on_the_device_is_the_training_transform():
    """--pixel-augment-on-device splits train_transform in two; drawing in the same order gives the same image."""
    from PIL import Image

    pixels = torch.randint(0, 256, (48, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    image = Image.fromarray(pixels.numpy())
    recipe = (40, 0.08, 0.5)  # size, scale_min, hflip
    whole = train_transform(*recipe, 9, 1.0, (0.5,) * 3, (0.2,) * 3, rotation=10)
    crop, on_device = crop_transform(*recipe, rotation=10), EachImage(pixel_transform(9, 1.0, (0.5,) * 3, (0.2,) * 3))
    for seed in range(8):
        torch.manual_seed(seed)
        expected = whole(image)
        torch.manual_seed(seed)
        cropped = crop(image)  # what a worker sends: uint8 [3, 40, 40]
        assert cropped.dtype == torch.uint8 and cropped.shape == (3, 40, 40)
        assert torch.equal(on_device(cropped[None])[0], expected)


def test_pixel_augment_on_device_sends_uint8_crops_and_trains(image_folder):
    from coat.train.classify import ClassificationTask
    from coat.train.config import resolve
    from coat.train.distributed import DistInfo
    from coat.train.loop import Runtime

    task = ClassificationTask(
        resolve(
            {
                "data": str(image_folder),
                "batch_size": 4,
                "input_size": 32,
                "workers": 0,
                "pixel_augment_on_device": True,
            }
        )
    )
    train, _ = task.build_data(DistInfo(0, 1))
    images, targets, _ = next(iter(train))
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 32, 32)
    runtime = Runtime(torch.device("cpu"), DistInfo(0, 1), contextlib.nullcontext())
    loss, count = task.batch_loss(task.build_model(), (images, targets, 0), runtime)
    assert count == 4 and torch.isfinite(loss)
    assert "pixel augmentation on the device" in task.describe(runtime, 1e-3)


def test_pick_device_gives_each_process_of_a_node_its_gpu(monkeypatch):
    from coat.train.distributed import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [pick_device("auto", rank) for rank in (0, 1)] == [torch.device("cuda:0"), torch.device("cuda:1")]
    assert pick_device("cuda", 1) == torch.device("cuda:1") and pick_device("cuda:0", 1) == torch.device("cuda:0")
    assert pick_device("cpu", 1) == torch.device("cpu")
    with pytest.raises(ValueError, match=r"process 2 of this node has no GPU of its own: 2 CUDA GPU.*--device cpu"):
        pick_device("auto", 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto", 1) == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA GPU is available; use --device cpu"):
        pick_device("cuda")


def _training_state(epoch: int = 3):
    from coat.train.state import Progress, TrainingState, rng_state

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    history = [{"epoch": e + 1, "val_top1": 50.0 + e} for e in range(epoch)]
    return TrainingState(
        model_name="coat_lite_tiny",
        progress=Progress(epoch, 52.0, 12.5, 960, history),
        model=model.state_dict(),
        optimizer=optimizer.state_dict(),
        scheduler={"last_epoch": 7},
        ema=None,
        scaler=None,
        rng=[rng_state(), rng_state()],
    )


def test_training_state_round_trips_through_one_writer_and_one_reader(tmp_path):
    from coat.train.state import load_training_state, save_training_state

    state = _training_state()
    save_training_state(tmp_path / "last.pt", state)
    loaded = load_training_state(tmp_path / "last.pt")
    assert loaded.progress == state.progress and loaded.model_name == state.model_name
    assert torch.equal(loaded.model["weight"], state.model["weight"]) and loaded.scheduler == {"last_epoch": 7}
    assert torch.equal(loaded.rng_of(1)["torch"], state.rng[1]["torch"])
    assert torch.equal(loaded.rng_of(5)["torch"], state.rng[0]["torch"])  # a rank the saved run did not have


def test_last_pt_written_before_the_format_had_a_version_still_loads(tmp_path):
    """The flat dict older releases wrote (no format_version), read by today's reader."""
    from coat.train.state import load_training_state

    state = _training_state(epoch=2)
    old = {
        "model": state.model,
        "optimizer": state.optimizer,
        "scheduler": state.scheduler,
        "ema": None,
        "scaler": None,
        "epoch": 2,
        "best_score": 52.0,
        "history": state.progress.history,
        "model_name": "coat_lite_tiny",
        "seconds_training": 12.5,
        "images_trained": 960,
        "rng": state.rng,
    }
    torch.save(old, tmp_path / "last.pt")
    loaded = load_training_state(tmp_path / "last.pt")
    assert loaded.progress.epoch == 2 and loaded.progress.images_trained == 960 and loaded.ema is None


def test_last_pt_from_a_newer_release_is_named(tmp_path):
    from coat.checkpoint import CheckpointError
    from coat.train.state import STATE_FORMAT_VERSION, load_training_state, save_training_state

    save_training_state(tmp_path / "last.pt", _training_state())
    flat = torch.load(tmp_path / "last.pt", weights_only=True)
    torch.save({**flat, "format_version": STATE_FORMAT_VERSION + 1}, tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match="newer coat"):
        load_training_state(tmp_path / "last.pt")
