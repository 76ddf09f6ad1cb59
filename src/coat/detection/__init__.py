"""CoaT as a multi-scale backbone for torchvision's Mask R-CNN and Faster R-CNN, and for Cascade (Mask) R-CNN built on
torchvision's parts."""

from .backbone import CoaTBackbone, coat_fpn_backbone
from .builders import cascade_maskrcnn_coat, cascade_rcnn_coat, fasterrcnn_coat, maskrcnn_coat, rcnn_coat
from .cascade import CascadeMaskRCNN, CascadeRCNN, CascadeRoIHeads

__all__ = [
    "CascadeMaskRCNN",
    "CascadeRCNN",
    "CascadeRoIHeads",
    "CoaTBackbone",
    "cascade_maskrcnn_coat",
    "cascade_rcnn_coat",
    "coat_fpn_backbone",
    "fasterrcnn_coat",
    "maskrcnn_coat",
    "rcnn_coat",
]
