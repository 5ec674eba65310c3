#!/usr/bin/env bash
# GPU measurements (docs/results.md) on a machine with one CUDA GPU. Name the parts to run, in order (default: all):
#   smoke      a short bf16 training run of the real script (self-guided mnist-tiny), then sampling from it;
#   profile    where cifar10-ddpm's bf16 step spends its time at batch 1024 (benchmarks/profile_step.py): compiled
#              with --channels_last, the same with --no-cudnn_benchmark, compiled in NCHW;
#   autotune   cifar10-ddpm bf16 at batch 1024, --compile_mode max-autotune-no-cudagraphs vs the baseline;
#   b128       cifar10-ddpm bf16 at batch 128, ddpm-zoo vs the official-style baseline, interleaved: default
#              flags, then --compile --channels_last --compile_mode reduce-overhead (CUDA graphs);
#   largest    the reduce-overhead run at the largest batch that fits (from b128's peak memory per image);
#   small      mnist-tiny and colored-mnist bf16, default flags;
#   sampling   images/s per scheduler;
#   fp32       cifar10-ddpm without mixed precision, default flags.
# Every step has its own time limit; "smoke profile" takes about 10 minutes, and "autotune" (minutes of
# autotuning) about 7 on its own.
# Each part's JSON lands in benchmarks/results/ (suffix -gpu) and its log in $LOGS (default /tmp/gpu-suite);
# with ARCHIVE=path.tar.gz both are archived there after every step, so a cut-off run keeps what it measured
# (the profile's gzipped Chrome trace is copied beside the archive instead).
set -u
cd "$(dirname "$0")/.."
LOGS=${LOGS:-/tmp/gpu-suite}
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

step() {  # step NAME TIMEOUT_S COMMAND...: run one step with a time limit, log it, say how it ended
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" >"$LOGS/$name.log" 2>&1
    echo "== $name: exit $? after $((SECONDS - start)) s" | tee -a "$LOGS/steps.txt"
    tail -c 2000 "$LOGS/$name.log" | tr "\r" "\n" | tail -n 6
    if [ -n "${ARCHIVE:-}" ]; then
        tar czf "$ARCHIVE" --exclude='trace-*' "$LOGS" benchmarks/results/*-gpu.json 2>/dev/null
    fi
}

throughput() {  # throughput NAME TIMEOUT_S OPTIONS...
    local name=$1 limit=$2
    shift 2
    step "$name" "$limit" python3 benchmarks/train_throughput.py --baseline_workers 4 \
        --output "train_throughput-$name-gpu.json" "$@"
}

smoke() {
    step smoke-train 120 python3 -m accelerate.commands.launch --num_processes 1 --num_machines 1 \
        --mixed_precision bf16 --dynamo_backend no train_unconditional.py --preset mnist-tiny --max_train_steps 300 \
        --checkpointing_steps 150 --logging_steps 50 --output_dir /tmp/smoke --overwrite_output_dir --logger none
    step smoke-sample 45 python3 -m ddpm_zoo.commands.main sample /tmp/smoke --scheduler dpmsolver --num_images 64 \
        --output_dir "$LOGS/smoke-samples"
}

profile() {  # the first compile is cold; the second reuses Inductor's cache (same graph)
    step profile-compiled 240 python3 benchmarks/profile_step.py --preset cifar10-ddpm --precision bf16 \
        --batch 1024 --ours_flags="--compile --channels_last" --trace "$LOGS/trace-compiled.json" \
        --output profile_step-cifar10-bf16-b1024-compile-channels-last-gpu.json
    step profile-no-cudnn-benchmark 150 python3 benchmarks/profile_step.py --preset cifar10-ddpm --precision bf16 \
        --batch 1024 --ours_flags="--compile --channels_last --no-cudnn_benchmark" \
        --output profile_step-cifar10-bf16-b1024-compile-channels-last-no-cudnn-benchmark-gpu.json
    step profile-nchw 240 python3 benchmarks/profile_step.py --preset cifar10-ddpm --precision bf16 \
        --batch 1024 --ours_flags="--compile" --output profile_step-cifar10-bf16-b1024-compile-nchw-gpu.json
    gzip -f "$LOGS"/trace-*.json 2>/dev/null
    if [ -n "${ARCHIVE:-}" ]; then  # traces under 15 MiB go beside the archive
        find "$LOGS" -maxdepth 1 -name 'trace-*.json.gz' -size -15M -exec cp {} "$(dirname "$ARCHIVE")" \;
    fi
}

autotune() {
    throughput cifar10-bf16-b1024-max-autotune 420 --rounds 2 --steps 5 --presets cifar10-ddpm \
        --precisions bf16 --batch 1024 --ours_flags="--compile --channels_last --compile_mode max-autotune-no-cudagraphs"
}

b128() {
    throughput cifar10-bf16-b128 90 --rounds 3 --steps 20 --presets cifar10-ddpm --precisions bf16 --batch 128
    throughput cifar10-bf16-b128-compile-cudagraphs 200 --rounds 3 --steps 20 --presets cifar10-ddpm \
        --precisions bf16 --batch 128 --ours_flags="--compile --channels_last --compile_mode reduce-overhead"
}

largest() {  # b128's peak memory per image sizes the batch; 1024 without it
    local batch
    batch=$(python3 -c '
import json, torch
rows = json.load(open("benchmarks/results/train_throughput-cifar10-bf16-b128-gpu.json"))["rows"]
per_image_mib = max(r["peak_mem_mib"] for r in rows) / 128
free_mib = torch.cuda.mem_get_info()[0] / 2**20
print(min(4096, int(0.85 * free_mib / per_image_mib) // 128 * 128))
') || batch=1024
    echo "largest batch: $batch" | tee -a "$LOGS/steps.txt"
    throughput "cifar10-bf16-b${batch}-compile-cudagraphs" 200 --rounds 2 --steps 5 --presets cifar10-ddpm \
        --precisions bf16 --batch "$batch" --ours_flags="--compile --channels_last --compile_mode reduce-overhead"
}

small() {
    throughput small-presets-bf16-b128 90 --rounds 3 --steps 20 --presets mnist-tiny,colored-mnist \
        --precisions bf16 --batch 128
}

sampling() {
    step sampling 90 python3 benchmarks/sampling.py --device cuda --output benchmarks/results/sampling-gpu.json
}

fp32() {
    throughput cifar10-fp32-b128 90 --rounds 3 --steps 20 --presets cifar10-ddpm --precisions no --batch 128
}

parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(smoke profile autotune b128 largest small sampling fp32)
for part in "${parts[@]}"; do
    case $part in
    smoke | profile | autotune | b128 | largest | small | sampling | fp32) ;;
    *) echo "gpu_suite.sh: unknown part '$part'; choose from smoke profile autotune b128 largest small sampling fp32" >&2
        exit 2 ;;
    esac
done
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$LOGS/gpu.txt"
python3 -c "import torch, diffusers, accelerate; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'accelerate', accelerate.__version__)" | tee -a "$LOGS/gpu.txt"
for part in "${parts[@]}"; do
    "$part"
done
cat "$LOGS/steps.txt"
