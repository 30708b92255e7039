#!/usr/bin/env bash
# Re-train mini-sd15 and its ResAdapter from scratch (seeded; measured 22 + 12 min on 2 AMD EPYC cores), then
# install them as the package's built-in weights. Run from the repository root with the venv active.
#   bash examples/train_miniature.sh [WORK_DIR]
set -euo pipefail
work="${1:-miniature-run}"
mkdir -p "$work"
# 1. The base model: text encoder and UNet trained at 128x128 only (the VAE is the hand-set colour codec).
python -m resadapter_rt.miniature.train_base --out "$work/mini-sd15" --unet-steps 3000 --threads 2
# 2. The adapter's data: shapes at 30 sizes, 64-384 px, aspect 1:3-3:1.
python -m resadapter_rt.miniature.adapter_data --out "$work/adapter-data"
# 3. The ResAdapter, with the product's own trainer (base model frozen, official release format).
resadapter-rt train --model "$work/mini-sd15" --data "$work/adapter-data" --out "$work/mini-sd15-resadapter" \
  --rank 16 --steps 1500 --batch-size 8 --learning-rate 5e-4 --min-side 64 --max-side 384 --seed 0 \
  --checkpointing-steps 500 -q
# 4. Install as the built-ins (only the files the package ships).
dest=resadapter_rt/miniature/weights
rm -rf "$dest/mini-sd15" "$dest/mini-sd15-resadapter"
mkdir -p "$dest/mini-sd15-resadapter"
cp -r "$work/mini-sd15" "$dest/mini-sd15"
cp "$work/mini-sd15-resadapter/"{pytorch_lora_weights.safetensors,diffusion_pytorch_model.safetensors} "$dest/mini-sd15-resadapter/"
echo "installed into $dest; measure with: python benchmarks/miniature_effect.py"
