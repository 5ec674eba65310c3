#!/usr/bin/env bash
# The README's GPU rows in one go, on a machine with one CUDA GPU (sized to fit a ~10-minute loan):
#   1. a short bf16 training run of the real script, then sampling from what it saved (correctness);
#   2. cifar10-ddpm bf16 throughput at batch 128, ddpm-zoo vs the official-style baseline, interleaved:
#      default flags, then --compile --channels_last --compile_mode reduce-overhead (CUDA graphs);
#   3. the compiled run at the largest batch that fits (from the default-flags run's peak memory per image);
#   4. mnist-tiny and colored-mnist bf16, default flags;
#   5. sampling images/s per scheduler;
#   6. cifar10-ddpm without mixed precision, default flags.
# Each step's JSON lands in benchmarks/results/ (suffix -gpu) and its log in $LOGS (default /tmp/gpu-suite);
# with ARCHIVE=path.tar.gz both are archived there after every step, so a cut-off run keeps what it measured.
set -u
cd "$(dirname "$0")/.."
LOGS=${LOGS:-/tmp/gpu-suite}
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$LOGS/gpu.txt"
python3 -c "import torch, diffusers, accelerate; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'accelerate', accelerate.__version__)" | tee -a "$LOGS/gpu.txt"

step() {  # step NAME TIMEOUT_S COMMAND...: run one step with a time limit, log it, say how it ended
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" >"$LOGS/$name.log" 2>&1
    echo "== $name: exit $? after $((SECONDS - start)) s" | tee -a "$LOGS/steps.txt"
    tail -n 8 "$LOGS/$name.log"
    if [ -n "${ARCHIVE:-}" ]; then
        tar czf "$ARCHIVE" "$LOGS" benchmarks/results/*-gpu.json 2>/dev/null
    fi
}

step smoke-train 120 python3 -m accelerate.commands.launch --num_processes 1 --num_machines 1 \
    --mixed_precision bf16 --dynamo_backend no train_unconditional.py --preset mnist-tiny --max_train_steps 300 \
    --checkpointing_steps 150 --logging_steps 50 --output_dir /tmp/smoke --overwrite_output_dir --logger none
step smoke-sample 45 python3 -m ddpm_zoo.cli sample /tmp/smoke --scheduler dpmsolver --num_images 64 \
    --output_dir "$LOGS/smoke-samples"

throughput() {  # throughput NAME TIMEOUT_S OPTIONS...
    local name=$1 limit=$2
    shift 2
    step "$name" "$limit" python3 benchmarks/train_throughput.py --baseline_workers 4 \
        --output "train_throughput-$name-gpu.json" "$@"
}

throughput cifar10-bf16-b128 90 --rounds 3 --steps 20 --presets cifar10-ddpm --precisions bf16 --batch 128
throughput cifar10-bf16-b128-compile-cudagraphs 200 --rounds 3 --steps 20 --presets cifar10-ddpm --precisions bf16 \
    --batch 128 --ours_flags="--compile --channels_last --compile_mode reduce-overhead"
largest=$(python3 - <<'EOF'
import json, torch
rows = json.load(open("benchmarks/results/train_throughput-cifar10-bf16-b128-gpu.json"))["rows"]
per_image_mib = max(r["peak_mem_mib"] for r in rows) / 128
free_mib = torch.cuda.mem_get_info()[0] / 2**20
print(min(4096, int(0.85 * free_mib / per_image_mib) // 128 * 128))
EOF
) || largest=1024
echo "largest batch: $largest" | tee -a "$LOGS/steps.txt"
throughput "cifar10-bf16-b${largest}-compile-cudagraphs" 200 --rounds 2 --steps 5 --presets cifar10-ddpm \
    --precisions bf16 --batch "$largest" --ours_flags="--compile --channels_last --compile_mode reduce-overhead"
throughput small-presets-bf16-b128 90 --rounds 3 --steps 20 --presets mnist-tiny,colored-mnist --precisions bf16 \
    --batch 128
step sampling 90 python3 benchmarks/sampling.py --device cuda --output benchmarks/results/sampling-gpu.json
throughput cifar10-fp32-b128 90 --rounds 3 --steps 20 --presets cifar10-ddpm --precisions no --batch 128
cat "$LOGS/steps.txt"
