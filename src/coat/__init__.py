"""CoaT: Co-Scale Conv-Attentional Image Transformers (Xu, Xu, Chang, Tu, ICCV 2021)."""

from . import fast, weights
from .checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from .errors import CoatError
from .factory import create_model, list_models, load_model, variant_config
from .models.coat import CoaT
from .models.config import VARIANTS, CoaTConfig
from .weights import Weights, get_weights, list_weights

__version__ = "0.1.0"

__all__ = [
    "VARIANTS",
    "CheckpointError",
    "CoaT",
    "CoaTConfig",
    "CoatError",
    "Weights",
    "create_model",
    "fast",
    "get_weights",
    "list_models",
    "list_weights",
    "load_model",
    "read_checkpoint",
    "save_checkpoint",
    "variant_config",
    "weights",
]
