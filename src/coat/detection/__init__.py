"""CoaT as a multi-scale backbone for torchvision's Mask R-CNN and Faster R-CNN."""

from .backbone import CoaTBackbone, coat_fpn_backbone
from .builders import fasterrcnn_coat, maskrcnn_coat, rcnn_coat

__all__ = ["CoaTBackbone", "coat_fpn_backbone", "fasterrcnn_coat", "maskrcnn_coat", "rcnn_coat"]
