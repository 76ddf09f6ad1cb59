"""torch.hub entry points: ``torch.hub.load("OWNER/REPO", "coat_lite_tiny", pretrained=True)``.

``pretrained`` is what ``coat.create_model`` takes: ``True`` (the default released weights), a
weights name (``"coat_lite_tiny.authors"``), a file, a Hugging Face folder or ``hf-hub:ORG/NAME``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from coat import create_model, list_models

dependencies = ["torch", "torchvision", "safetensors", "huggingface_hub"]


def _entry_point(name):
    def build(pretrained=None, **kwargs):
        return create_model(name, pretrained=pretrained, **kwargs)

    build.__name__ = name
    build.__doc__ = f"CoaT variant {name}; keyword arguments go to coat.create_model."
    return build


for _name in list_models():
    globals()[_name] = _entry_point(_name)
