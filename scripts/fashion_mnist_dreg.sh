#!/usr/bin/env bash
# The README's DReG figure: configs/fashion_mnist_iwae.yaml (K = 50, 5 epochs) trained twice from one seed, with the
# reparameterized and the DReG encoder gradient, then both scored by IWAE-5000 on the same test images (paired).
# Usage: bash scripts/fashion_mnist_dreg.sh OUTPUT_FOLDER [NUM_TEST_POINTS (default 2000)] [more train.py options]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=$(mkdir -p "$1" && cd "$1" && pwd)
points=${2:-2000}
shift $(( $# >= 2 ? 2 : 1 ))
cd "$out"
for run in reparam:Reparameterized dreg:DReG; do
  name=${run%%:*} gradient=${run#*:}
  # One thread each, side by side on a 2-core machine; the runs differ only in the encoder's gradient.
  OMP_NUM_THREADS=1 "$root/.venv/bin/python" "$root/train.py" fit --config "$root/configs/fashion_mnist_iwae.yaml" \
    --data.root /usr/share/datasets/fashion-mnist --model.estimator.init_args.gradient "$gradient" \
    --trainer.logger.init_args.name "iwae_$name" --trainer.enable_progress_bar false --amortization_gap.every_n_epochs 0 "$@" \
    > "train_$name.log" 2>&1 &
done
wait
"$root/.venv/bin/python" "$root/benchmarks/paired_log_px.py" runs/iwae_reparam/version_0/checkpoints/last.ckpt \
  runs/iwae_dreg/version_0/checkpoints/last.ckpt --num_points "$points" --num_samples 5000 --output paired.json
