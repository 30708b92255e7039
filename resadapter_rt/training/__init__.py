"""Stage 1b, training: making a ResAdapter from a personalized (or base) SD1.5/SDXL model and a folder
of captioned images at many sizes — ``resadapter-rt train``. It freezes the model, trains exactly the
ResAdapter set (a rank-r PEFT LoRA on the down/upsampler convs plus the ResNet GroupNorm affines)
with the standard noise-prediction loss on aspect/size buckets, checkpoints resumably (a resume
continues bit-identically), and writes the adapter in the official release layout or the training
script's PEFT layout, both readable by ``models.load_adapter``. It may import ``models`` and the
top-level shared modules only.
"""

from .data import SizeRules, parse_sizes, scan_dataset
from .trainable import FORMATS, add_trainable_adapter
from .options import TrainOptions, TrainResult
from .trainer import train

__all__ = ["FORMATS", "SizeRules", "TrainOptions", "TrainResult", "add_trainable_adapter", "parse_sizes", "scan_dataset",
           "train"]
