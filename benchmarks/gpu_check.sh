#!/usr/bin/env bash
# One-GPU check of the whole path (issue 23), a few minutes on an H200, nothing downloaded:
#   1. an APS search of the CIFAR ResNet-20 space on 32x32 inputs (the embedded digits upsampled, CIFAR's
#      shape; budget 20.8M MACs as the paper's) past its warm-up, in bf16 (the search's default on GPUs);
#      then the retraining of the searched config (bf16), its export and a load through timm;
#      prints the search's images/s after warm-up and the peak GPU memory of each stage;
#   2. benchmarks/search_step.py at batch 256 in bf16: the supernet / standalone step-time ratio.
#
#   bash benchmarks/gpu_check.sh          # on a machine with a GPU
#   bash benchmarks/gpu_check.sh --cpu    # smoke run of the same script on CPU (8x8 inputs, tiny steps)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 MPLBACKEND=Agg PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [ "${1:-}" = "--cpu" ]; then
  cpu=1 size=8 budget=1.3e6 batch=32 step_args="--device cpu --batch 16 --archs 1 --steps 1 --floor-batches 16"
  schedule="search.epochs=3 search.warmup_epochs=1 search.steps_per_epoch=5 train.epochs=1 train.steps_per_epoch=5"
else
  cpu=0 size=32 budget=2.08e7 batch=256 step_args="--device cuda --batch 256 --archs 3 --steps 5 --floor-batches 256"
  # bf16 for the retraining too: one process holds one Accelerate state, and the search's is bf16 on a GPU
  schedule="search.epochs=8 search.warmup_epochs=3 train.epochs=3 train.mixed_precision=bf16"
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

python - "$out" "$cpu" "$size" "$budget" "$batch" $schedule <<'EOF'
import json, sys, time
import torch
out, cpu, size, budget, batch = sys.argv[1], sys.argv[2] == '1', int(sys.argv[3]), sys.argv[4], sys.argv[5]
schedule = sys.argv[6:]
import timm
import aps_zoo
from aps_zoo.hub import export_run
from aps_zoo.recipe import load_recipe
from aps_zoo.search.loop import search
from aps_zoo.train import train

recipe = load_recipe('recipes/search_resnet20_digits.yaml', [
    f'output_dir={out}', f'data.image_size={size}', f'data.batch_size={batch}', 'data.eval_batch_size=512',
    f'search.budget_macs={budget}', 'search.decode_top_k=4', 'search.controller.steps_per_epoch=10', *schedule])
peaks = {}

def stage(name, fn):
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = fn()
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if torch.cuda.is_available() else float('nan')
    print(f"{name}: {time.perf_counter() - start:.1f} s, peak GPU memory {peak:.2f} GiB", flush=True)
    return result

found = stage('search', lambda: search(recipe, cpu=cpu))
records = [json.loads(line) for line in (found.out_dir / 'metrics.jsonl').read_text().splitlines()]
after = [r['images_per_s'] for r in records if r['phase'] == 'search']
report = (found.out_dir / 'search_report.md').read_text()
print(f"search: {sum(after) / len(after):.0f} images/s after warm-up ({len(after)} epochs); "
      f"{next(l for l in report.splitlines() if 'mixed precision' in l).strip('- ')}")
trained = stage('retrain', lambda: train(recipe, found.config_path, cpu=cpu))
folder = stage('export', lambda: export_run(trained.out_dir, f'{out}/export'))
model = timm.create_model(f'local-dir:{folder}').eval()
with torch.no_grad():
    logits = model(torch.randn(2, 3, size, size))
print(f"load: local-dir:{folder.name} -> {type(model).__name__}, logits {tuple(logits.shape)}, "
      f"test top-1 {trained.top1:.2f}%")
EOF

python benchmarks/search_step.py $step_args --bf16
