#!/usr/bin/env bash
# The README's "How far each estimator is from the truth" figures for a Fashion-MNIST VAE checkpoint, on the first 1,000
# test images thresholded at 0.5 (as Cremer et al.): IWAE-5000 from q_φ and from q*, AIS from q_φ and from q*, the gaps
# with either log p(x), and the BDMC sandwich on 100 points simulated from the model.
# Usage: bash scripts/fashion_mnist_truth.sh CKPT OUTPUT_FOLDER [more lvm-evaluate options, e.g. --ais.num_steps 3000]
set -euo pipefail
cd "$(dirname "$0")/.."
ckpt=$1 out=$2
shift 2
mkdir -p "$out"
.venv/bin/python -c "
import numpy; from lvm_lightning.data import FashionMNISTData as F
d = F(root='/usr/share/datasets/fashion-mnist', binarization='threshold'); d.setup()
numpy.save('$out/test1000_threshold.npy', d.splits['test'][:1000].numpy())"
gaps=(--gap_points 1000 --gap.max_steps 5000 --gap.check_every 100 --gap.patience 10)  # Cremer et al.'s setting
.venv/bin/lvm-evaluate "$ckpt" --data_path "$out/test1000_threshold.npy" --estimators importance_sampling elbo --num_samples 5000 \
    "${gaps[@]}" --output "$out/importance_sampling.json" "$@"
.venv/bin/lvm-evaluate "$ckpt" --data_path "$out/test1000_threshold.npy" --estimators ais --num_samples 5000 \
    "${gaps[@]}" --gap_log_px ais --bdmc 100 --output "$out/ais.json" "$@"
