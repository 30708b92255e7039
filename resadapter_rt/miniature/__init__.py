"""The miniature: a shapes grammar, a scorer for it, and ``mini-sd15`` (a small SD1.5-architecture model trained
here at 128x128 only) with its ResAdapter, so ResAdapter's effect can be seen and measured on a CPU.

Modules: ``shapes`` (the data), ``scorer`` (object count and colour), ``train_base`` (training the base
model), ``adapter_data`` (the adapter's training folder), ``demo`` (``resadapter-rt demo``); the architecture,
tokenizer and hand-set VAE are ``models/mini.py``, the trained weights ``weights/``.
"""

DEMO_PROMPT = "a red circle on a white background"
DEMO_GUIDANCE = 5.0  # what the miniature benchmark and demo use
# mini-sd15's adapter was trained at alpha 1 at every size (64-384 px); the official adapters' bands (alpha
# auto: 0.47 at 2x, 0.2 at 3x) under-use it: benchmarks/results/miniature_effect.json measures both.
DEMO_ALPHA = "1.0"
