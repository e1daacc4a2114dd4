#!/usr/bin/env bash
# Every GPU figure in one call, for the few minutes a lent GPU gives (the device tool runs it from the repository root):
#   here, once:  pip download --no-deps -d .gpu_wheels 'jsonargparse[signatures]' docstring-parser typeshed-client
#                mkdir -p data/fashion-mnist && cp /usr/share/datasets/fashion-mnist/*.gz data/fashion-mnist/
#   then:        run(command="bash benchmarks/gpu.sh", carry=[".gpu_wheels", "data/fashion-mnist"], timeout_s=540)
# The device image has torch and Lightning but not jsonargparse, and reaches no registry: the wheels travel.
# Prints one table per benchmark into $OUT (or ./gpu_out), each step bounded, the most wanted first: should the call's limit
# cut the last ones off, the tables before them are kept.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu_out}
mkdir -p "$out"
root=${FASHION_ROOT:-data/fashion-mnist}
python3 -m pip install -q --no-index --find-links .gpu_wheels 'jsonargparse[signatures]' 2>&1 | tail -2
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
step() {  # NAME SECONDS COMMAND...: one benchmark, its output kept whatever happens to the others
  local name=$1 limit=$2; shift 2
  echo "== $name" | tee -a "$out/summary.txt"
  timeout "$limit" "$@" > "$out/$name.log" 2>&1; echo "exit $?" >> "$out/$name.log"
  tail -8 "$out/$name.log" | tee -a "$out/summary.txt"
}
# No host sync inside the training step: CUDA reports every synchronizing call as a warning.
step sync_debug 60 python3 -c "
import torch, warnings
from lvm_lightning.models import VAE
from lvm_lightning.objectives import ImportanceSampling
model, estimator = VAE(784, 50, (200, 200), (200, 200), 'tanh', 'bernoulli').cuda(), ImportanceSampling(5)
x = torch.bernoulli(torch.rand(100, 784, device='cuda'))
estimator.objective(model, x).surrogate.mean().backward()
torch.cuda.set_sync_debug_mode('warn')
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    (-estimator.objective(model, x).surrogate.mean()).backward()
print('synchronizing calls in one step:', len(caught), [str(w.message)[:80] for w in caught[:3]])"
# fp32 and bf16 networks through train.py (per step, FLOP/s against the measured peaks) and IWAE-5000 evaluation.
step speed 150 python3 benchmarks/speed.py --device cuda --root "$root" --ks 1 50 --steps 300 --repeats 1 --eval_points 100
# Lightning's own cost per step, and where it goes (logger, progress bar).
step step_cost 90 python3 benchmarks/step_cost.py --device cuda --root "$root" --steps 1000 --repeats 1
step images_epoch 120 python3 benchmarks/images_epoch.py --root "$root" --device cuda --steps 200 --repeats 1
step local_inference 150 python3 benchmarks/local_inference.py --device cuda --points 1000 --steps 500 --serial-points 10
# The single-GPU step time that docs/results.md (scaling out)'s DDP estimate starts from (and DDP over all GPUs, when there are 2 or more).
gpus=$(nvidia-smi -L | wc -l)
devices=1; [ "$gpus" -ge 2 ] && devices="1 $gpus"
step ddp_overhead 90 python3 benchmarks/ddp_overhead.py --accelerator gpu --devices $devices --steps 300 --warmup 30 --repeats 1 --root "$root"
step end_to_end 100 python3 benchmarks/end_to_end.py --configs fashion_mnist_vae --epochs 1 --root "$root" --device cuda --extra --trainer.accelerator gpu
cat "$out/summary.txt"
