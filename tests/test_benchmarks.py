"""The benchmark scripts run end to end on the presets as they are trained today (tiny settings)."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, write_tiny_unet_config

BENCHMARKS = REPO_ROOT / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import profile_step  # noqa: E402
import time_to_quality  # noqa: E402


def run_benchmark(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(BENCHMARKS / script), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=REPO_ROOT)


def run_on_tiny_unet(tmp_path, script: str, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    """Run `script` on the test-sized UNet's config; return the process and the JSON it wrote."""
    config = write_tiny_unet_config(tmp_path) / "config.json"
    output = tmp_path / "result.json"
    result = run_benchmark(script, "--unet_config", str(config), "--output", str(output), *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return result, json.loads(output.read_text())


@pytest.mark.slow
def test_train_throughput_measures_both_trainers_on_the_self_guided_preset(tmp_path):
    """The mnist-tiny preset self-guides, so its UNet has class embeddings; the baseline must feed them too."""
    result, report = run_on_tiny_unet(
        tmp_path,
        "train_throughput.py",
        *("--precisions", "no", "--batch", "16", "--rounds", "1", "--steps", "1"),
        "--ours_flags=--no-compile",  # a benchmark trainer is built for a long run, which compiles by default
    )
    rows = report["rows"]
    assert [row["trainer"] for row in rows] == ["ddpm-zoo --no-compile", "official-style"]
    ours, baseline = rows
    assert ours["gflop_per_img"] == baseline["gflop_per_img"] > 0
    assert ours["params_m"] == baseline["params_m"]
    assert ours["img_per_s"] > 0 and baseline["img_per_s"] > 0 and ours["mfu_pct"] > 0
    assert ours["speedup_vs_official"] == round(baseline["s_per_step"] / ours["s_per_step"], 2)
    assert "official-style" in result.stdout


@pytest.mark.slow
def test_train_throughput_exits_non_zero_when_a_measurement_fails(tmp_path):
    output = tmp_path / "throughput.json"
    result = run_benchmark("train_throughput.py", "--presets", "no-such-preset", "--output", str(output))
    assert result.returncode == 1
    assert "error: no measurement for no-such-preset:no, no-such-preset:bf16" in result.stderr
    assert json.loads(output.read_text())["rows"] == []


@pytest.mark.slow
def test_sampling_times_the_pipelines_training_saves(tmp_path):
    """mnist-tiny samples self-guided at its default weight unless told guidance 0; cifar10-ddpm unguided."""
    output = tmp_path / "sampling.json"
    result = run_benchmark(
        "sampling.py", "--presets", "mnist-tiny", "--rounds", "1", "--max_timed_steps", "1", "--output", str(output)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(output.read_text())["results"]
    weights = {(r["scheduler"], r["steps"], r["guidance_scale"]) for r in results}
    assert ("dpmsolver", 20, 3.0) in weights and ("dpmsolver", 20, 0.0) in weights
    assert all(r["images_per_s_median"] > 0 and r["timed_steps"] == 1 for r in results)


@pytest.mark.parametrize(
    ("name", "category"),
    [
        (
            "sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128x64_warpgroupsize1x1x1"
            "_g1_execute_segment_k_off_kernel__5x_cudnn",
            "convolution",
        ),
        ("sm90_xmma_dgrad_implicit_gemm_indexed_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128x64", "convolution"),
        ("triton_tem_fused_convolution_0", "convolution"),
        ("aten::convolution_backward", "convolution"),
        ("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_TNT", "matmul"),
        (
            "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off",
            "matmul",
        ),
        ("splitKreduce_kernel", "matmul"),
        ("triton_tem_fused_addmm_3", "matmul"),
        ("aten::addmm", "matmul"),
        (
            "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4, cutlass::bfloat16_t>>",
            "attention",
        ),
        ("fmha_cutlassB_bf16_aligned_64x64_k64_sm80(PyTorchMemEffAttention::AttentionBackwardKernel)", "attention"),
        ("triton_per_fused_native_group_norm_silu_0", "fused (Inductor)"),
        ("triton_poi_fused_convolution_1", "fused (Inductor)"),
        ("Torch-Compiled Region: 0/0", "fused (Inductor)"),
        (
            "void cudnn::engines_precompiled::nchwToNhwcKernel<__nv_bfloat16, __nv_bfloat16, float, false>",
            "layout transforms",
        ),
        ("void at::native::(anonymous namespace)::RowwiseMomentsCUDAKernel<float, float>", "normalization"),
        ("aten::native_group_norm_backward", "normalization"),
        (
            "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<TensorListMetadata<4>, "
            "FusedAdamMathFunctor<float, 4>>",
            "optimizer and EMA",
        ),
        ("Memcpy HtoD (Pageable -> Device)", "copies and fills"),
        ("void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda>", "copies and fills"),
        (
            "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::BFloat16>>",
            "other elementwise and reductions",
        ),
        ("cudaLaunchKernel", "other"),
    ],
)
def test_profile_categories_of_real_kernel_names(name, category):
    assert profile_step.categorise(name) == category


@pytest.mark.slow
def test_profile_step_accounts_for_the_step_on_cpu(tmp_path):
    result, report = run_on_tiny_unet(
        tmp_path,
        "profile_step.py",
        "--preset",
        "mnist-tiny",
        "--precision",
        "no",
        "--batch",
        "16",
        *("--warmup", "1", "--steps", "2"),
        "--ours_flags=--no-compile",
    )
    shares = {row["category"]: row["share_pct"] for row in report["categories"]}
    assert sum(shares.values()) == pytest.approx(100, abs=0.5)
    assert shares["convolution"] > 10 and "normalization" in shares and "optimizer and EMA" in shares
    summary = report["summary"]
    assert summary["busy_ms_per_step"] == pytest.approx(sum(r["ms_per_step"] for r in report["categories"]), abs=0.05)
    assert summary["gflop_per_step"] > 0 and summary["mfu_pct"] > 0 and summary["matmul_like_rate_pct_of_peak"] > 0
    assert "convolution" in result.stdout


def test_time_to_quality_reads_the_training_loop_from_the_run_summary(tmp_path):
    (tmp_path / "training_summary.json").write_text(json.dumps({"global_step": 1600, "wall_time_s": 320.0}))
    assert time_to_quality.training_loop(tmp_path) == {"training_loop_s": 320.0, "steps_per_s": 5.0}


def test_gpu_suite_refuses_an_unknown_part_before_running_anything(tmp_path):
    env = {**os.environ, "LOGS": str(tmp_path / "logs")}
    command = ["bash", str(BENCHMARKS / "gpu_suite.sh"), "smoke", "profiel"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2
    assert "gpu_suite.sh: unknown part 'profiel'; choose from smoke profile autotune" in result.stderr
    assert not (tmp_path / "logs" / "steps.txt").exists()


@pytest.mark.slow
def test_saved_activations_compares_group_norm_dtypes_and_partitions(tmp_path):
    """The CUDA-like fp32 GroupNorm saves fp32 tensors when partitioned as traced; with Inductor's
    decompositions the partitioner recomputes the upcast, so both GroupNorms save the same bf16 bytes."""
    _, report = run_on_tiny_unet(tmp_path, "saved_activations.py", "--batch", "2")
    rows = {(row["group_norm"], row["partitioned"]): row for row in report["rows"]}
    cuda_like_eager = rows[("fp32 out (CUDA autocast)", "as traced (eager-like)")]
    cuda_like_compiled = rows[("fp32 out (CUDA autocast)", "Inductor decompositions")]
    bf16_compiled = rows[("bf16 out", "Inductor decompositions")]
    assert cuda_like_eager["float32_mb"] > 0 and cuda_like_eager["float32_tensors"] > 0
    assert cuda_like_compiled["saved_mb_per_img"] < cuda_like_eager["saved_mb_per_img"]
    assert cuda_like_compiled["saved_mb_per_img"] == bf16_compiled["saved_mb_per_img"] > 0
