"""Released weights: the table, names users type, verified downloads and caches, offline clusters.

Downloads go to a server on 127.0.0.1 that serves the authors' files (COAT_WEIGHTS_URL) and
answers like the Hugging Face hub (HF_ENDPOINT): the same code paths as the real addresses.
"""

import hashlib
import http.server
import json
import threading
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import coat
from coat import weights as weights_table
from coat.checkpoint import Checkpoint, authors_to_coat
from coat.cli import main
from coat.download import DownloadError
from coat.inference import imagenet_class_names
from coat.weights import WEIGHTS, Weights, get_weights
from fixture_weights import authors_state_dict

AUTHORS_FILES = [
    "coat_lite_tiny_e88e96b0.pth",
    "coat_lite_mini_6b4a8ae5.pth",
    "coat_lite_small_8d362f48.pth",
    "coat_lite_medium_a750cd63.pth",
    "coat_lite_medium_384x384_f9129688.pth",
    "coat_tiny_c6efc33c.pth",
    "coat_mini_40667eec.pth",
    "coat_small_7479cf9b.pth",
]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeServer:
    """Serves ``files`` (URL path -> bytes); hub paths answer HEAD with the hub's headers. Counts GETs."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.gets: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _headers(self) -> bytes | None:
                path = self.path.split("?")[0]
                body = server.files.get(path)
                if body is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
                self.send_header("X-Repo-Commit", COMMIT)
                self.end_headers()
                return body

            def do_HEAD(self) -> None:
                self._headers()

            def do_GET(self) -> None:
                server.gets.append(self.path)
                body = self._headers()
                if body is not None:
                    self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server(tmp_path, monkeypatch):
    fake = FakeServer()
    monkeypatch.setenv("COAT_WEIGHTS_URL", fake.url + "/authors")
    monkeypatch.setenv("HF_ENDPOINT", fake.url)
    monkeypatch.setenv("COAT_CACHE", str(tmp_path / "cache"))
    for name in ("COAT_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    yield fake
    fake.httpd.shutdown()


def _authors_bytes(tmp_path: Path, variant: str = "coat_lite_tiny") -> bytes:
    path = tmp_path / "authors.pth"
    torch.save({"model": authors_state_dict(variant), "epoch": 299}, path)
    return path.read_bytes()


def _timm_bytes(tmp_path: Path, variant: str = "coat_lite_tiny") -> bytes:
    state = {
        k: v.contiguous()
        for k, v in authors_state_dict(variant).items()
        if k.split(".")[0] not in ("norm1", "norm2", "norm3")
    }
    save_file(state, str(tmp_path / "timm.safetensors"))
    return (tmp_path / "timm.safetensors").read_bytes()


def _test_entry(monkeypatch, data: bytes, prefix: str | None = None) -> Weights:
    """A table entry for the served file (the real entries carry the real files' digests)."""
    prefix = prefix or hashlib.sha256(data).hexdigest()[:8]
    entry = Weights(
        "coat_lite_tiny",
        "test",
        f"coat_lite_tiny_{prefix}.pth",
        get_weights("coat_lite_tiny.authors").preprocessing,
        {"top1": 77.5},
        sha256_prefix=prefix,
    )
    monkeypatch.setitem(WEIGHTS, entry.name, entry)
    return entry


def _fixture_model() -> coat.CoaT:
    """The fixture weights, loaded without any download."""
    state, _ = authors_to_coat(authors_state_dict("coat_lite_tiny"))
    return coat.create_model("coat_lite_tiny", pretrained=Checkpoint(state, "authors"))


# ---------------------------------------------------------------------------- the table
def test_every_variant_has_both_sources():
    for variant in coat.list_models():
        assert coat.weights.list_weights(variant) == [f"{variant}.in1k", f"{variant}.authors"]
        hub, authors = get_weights(f"{variant}.in1k"), get_weights(f"{variant}.authors")
        assert get_weights(variant) is hub  # the bare name is the default
        assert hub.hub_repo == f"timm/{variant}.in1k" and hub.file_name == "model.safetensors"
        assert hub.url == f"https://huggingface.co/timm/{variant}.in1k/resolve/main/model.safetensors"
        assert authors.url == f"https://vcl.ucsd.edu/coat/pretrained/{authors.file_name}"
        assert authors.sha256_prefix in authors.file_name and len(authors.sha256_prefix) == 8
        assert hub.metrics["top1"] == authors.metrics["top1"] == coat.VARIANTS[variant].top1
        assert abs(hub.metrics["timm_top1"] - hub.metrics["top1"]) < 0.5
        assert hub.params_m == coat.VARIANTS[variant].params_m and hub.categories == "imagenet-1k"
    assert sorted(w.file_name for w in WEIGHTS.values() if w.tag == "authors") == sorted(AUTHORS_FILES)


@pytest.mark.parametrize(
    "name, size, resize",
    [("coat_lite_tiny.in1k", 224, 248), ("coat_lite_tiny.authors", 224, 256), ("coat_lite_medium_384.in1k", 384, 384)],
)
def test_weights_transforms(name, size, resize):
    w = get_weights(name)
    assert w.preprocessing.resize_size == resize
    out = w.transforms()(Image.new("RGB", (500, 300), (10, 200, 30)))
    assert out.shape == (3, size, size) and out.dtype == torch.float32
    expected = (torch.tensor([10, 200, 30]) / 255 - torch.tensor(w.preprocessing.mean)) / torch.tensor(
        w.preprocessing.std
    )
    assert torch.allclose(out[:, size // 2, size // 2], expected, atol=1e-5)


def test_squash_resizes_both_sides():
    w = get_weights("coat_lite_medium_384.in1k")  # timm's crop_mode squash at crop 1.0: the whole image
    image = Image.new("RGB", (600, 300), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 60, 300))  # a white band on the left tenth
    out = w.transforms()(image)
    assert out[0, 192, 10] > 1.5  # still there after squashing, not cropped away


def test_unknown_weights_name():
    with pytest.raises(ValueError, match=r"unknown weights 'coat_tiny\.in22k'"):
        get_weights("coat_tiny.in22k")


# ---------------------------------------------------------------------------- the authors' files
def test_authors_file_downloaded_verified_cached_and_loaded(server, tmp_path, monkeypatch, capsys):
    data = _authors_bytes(tmp_path)
    entry = _test_entry(monkeypatch, data)
    server.files[f"/authors/{entry.file_name}"] = data
    model = coat.create_model("coat_lite_tiny", pretrained=entry.name).eval()
    cached = tmp_path / "cache" / "authors" / entry.file_name
    assert cached.read_bytes() == data and len(server.gets) == 1
    assert model.preprocessing == entry.preprocessing
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), _fixture_model().eval()(x))
    coat.create_model("coat_lite_tiny", pretrained=entry.name)
    assert len(server.gets) == 1  # the verified cache is reused
    cached.write_bytes(data[:-10] + b"0123456789")  # damaged in the cache
    coat.create_model("coat_lite_tiny", pretrained=entry.name)
    assert len(server.gets) == 2 and cached.read_bytes() == data  # detected and fetched again
    assert list(cached.parent.iterdir()) == [cached]  # no temporary files left behind


def test_digest_mismatch_deletes_the_download(server, tmp_path, monkeypatch):
    data = _authors_bytes(tmp_path)
    entry = _test_entry(monkeypatch, data, prefix="00000000")
    server.files[f"/authors/{entry.file_name}"] = data
    with pytest.raises(
        DownloadError,
        match=f"has SHA-256 {hashlib.sha256(data).hexdigest()}, but .* must start "
        "with 00000000; the download was deleted",
    ):
        coat.create_model("coat_lite_tiny", pretrained=entry.name)
    assert not any((tmp_path / "cache" / "authors").iterdir())


def test_unreachable_server_is_one_sentence(server, tmp_path, monkeypatch):
    entry = _test_entry(monkeypatch, b"x")
    with pytest.raises(DownloadError, match=r"could not download .*coat_lite_tiny_.*\.pth .*COAT_WEIGHTS_URL"):
        coat.read_checkpoint(entry.name)


def test_offline_reads_the_cache_only(server, tmp_path, monkeypatch):
    data = _authors_bytes(tmp_path)
    entry = _test_entry(monkeypatch, data)
    server.files[f"/authors/{entry.file_name}"] = data
    monkeypatch.setenv("COAT_OFFLINE", "1")
    with pytest.raises(DownloadError, match=rf"not in the cache .* run `coat download {entry.name}` where there is"):
        coat.read_checkpoint(entry.name)
    assert server.gets == []
    monkeypatch.delenv("COAT_OFFLINE")
    coat.read_checkpoint(entry.name)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert coat.read_checkpoint(entry.name).variant == "coat_lite_tiny" and len(server.gets) == 1


# ---------------------------------------------------------------------------- the hub copies
def test_hub_default_weights_with_pretrained_true(server, tmp_path, monkeypatch):
    data = _timm_bytes(tmp_path)
    server.files["/timm/coat_lite_tiny.in1k/resolve/main/model.safetensors"] = data
    model = coat.create_model("coat_lite_tiny", pretrained=True).eval()
    assert model.preprocessing == get_weights("coat_lite_tiny.in1k").preprocessing
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), _fixture_model().eval()(x))
    gets = len(server.gets)
    monkeypatch.setenv("COAT_OFFLINE", "1")  # cached: loads without the network
    coat.create_model("coat_lite_tiny", pretrained="coat_lite_tiny.in1k")
    assert len(server.gets) == gets
    blob = next((tmp_path / "cache" / "huggingface").rglob("blobs/*"))
    blob.write_bytes(data[:-4] + b"\0\0\0\0")
    with pytest.raises(DownloadError, match=r"is damaged .* run `coat download coat_lite_tiny\.in1k`"):
        coat.create_model("coat_lite_tiny", pretrained=True)
    monkeypatch.delenv("COAT_OFFLINE")
    coat.create_model("coat_lite_tiny", pretrained=True)  # online: fetched again
    assert blob.read_bytes() == data


def test_hf_hub_prefix_with_config(server, tmp_path):
    server.files["/org/digits/resolve/main/model.safetensors"] = _timm_bytes(tmp_path)
    config = {
        "architecture": "coat_lite_tiny",
        "num_classes": 1000,
        "pretrained_cfg": {
            "input_size": [3, 256, 256],
            "crop_pct": 0.95,
            "interpolation": "bilinear",
            "mean": [0.5, 0.5, 0.5],
            "std": [0.5, 0.5, 0.5],
            "crop_mode": "center",
        },
    }
    server.files["/org/digits/resolve/main/config.json"] = json.dumps(config).encode()
    checkpoint = coat.read_checkpoint("hf-hub:org/digits")
    assert checkpoint.variant == "coat_lite_tiny"
    model = coat.create_model("coat_lite_tiny", pretrained=checkpoint)
    assert (model.preprocessing.input_size, model.preprocessing.crop_pct, model.preprocessing.interpolation) == (
        256,
        0.95,
        "bilinear",
    )
    with pytest.raises(DownloadError, match=r"org/none has no file model\.safetensors"):
        coat.read_checkpoint("hf-hub:org/none")


def test_hub_offline_miss_names_the_download_command(server, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        DownloadError,
        match=r"timm/coat_mini.in1k/model.safetensors is not in the cache .* "
        r"`coat download coat_mini.in1k`",
    ):
        coat.create_model("coat_mini", pretrained=True)
    assert server.gets == []


# ---------------------------------------------------------------------------- commands
def test_coat_download_then_offline_predict(server, tmp_path, monkeypatch, capsys):
    data = _authors_bytes(tmp_path)
    entry = _test_entry(monkeypatch, data)
    server.files[f"/authors/{entry.file_name}"] = data
    server.files["/timm/coat_lite_tiny.in1k/resolve/main/model.safetensors"] = _timm_bytes(tmp_path)
    login_node = tmp_path / "shared"
    assert main(["download", "coat_lite_tiny", entry.name, "--to", str(login_node)]) == 0
    out = capsys.readouterr().out
    assert f"COAT_CACHE={login_node}" in out and entry.file_name in out
    monkeypatch.setenv("COAT_CACHE", str(login_node))
    monkeypatch.setenv("COAT_OFFLINE", "1")
    Image.new("RGB", (64, 64), (200, 10, 10)).save(tmp_path / "red.png")
    for name in ("coat_lite_tiny", entry.name):
        assert main(["predict", str(tmp_path / "red.png"), "--checkpoint", name, "--json", "--topk", "1"]) == 0
        label = json.loads(capsys.readouterr().out)[0]["topk"][0]["label"]
        assert label in imagenet_class_names()
    assert main(["download", "coat_tiny.in1k"]) == 2
    assert "coat download coat_tiny.in1k" in capsys.readouterr().err


def test_download_list(capsys):
    assert main(["download", "--list"]) == 0
    out = capsys.readouterr().out
    for name in WEIGHTS:
        assert name in out
    assert "coat_lite_medium_384x384_f9129688.pth" in out


def test_torch_hub_entry_point_takes_weights_names(server, tmp_path):
    server.files["/timm/coat_lite_tiny.in1k/resolve/main/model.safetensors"] = _timm_bytes(tmp_path)
    repo = Path(__file__).resolve().parents[1]
    model = torch.hub.load(str(repo), "coat_lite_tiny", source="local", pretrained=True)
    assert torch.equal(model.head.weight, _fixture_model().head.weight)


def test_weights_module_is_public():
    assert coat.weights is weights_table and coat.get_weights("coat_tiny").name == "coat_tiny.in1k"
