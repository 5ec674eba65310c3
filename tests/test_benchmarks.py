"""The benchmark scripts run end to end on the presets as they are trained today (tiny settings)."""

import json
import os
import subprocess
import sys

from conftest import REPO_ROOT, write_tiny_unet_config

BENCHMARKS = REPO_ROOT / "benchmarks"


def run_benchmark(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(BENCHMARKS / script), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=REPO_ROOT)


def test_train_throughput_measures_both_trainers_on_the_self_guided_preset(tmp_path):
    """The mnist-tiny preset self-guides, so its UNet has class embeddings; the baseline must feed them too."""
    config = write_tiny_unet_config(tmp_path) / "config.json"
    output = tmp_path / "throughput.json"
    result = run_benchmark(
        "train_throughput.py",
        *("--unet_config", str(config), "--precisions", "no", "--batch", "16"),
        *("--rounds", "1", "--steps", "1", "--output", str(output)),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(output.read_text())["rows"]
    assert [row["trainer"] for row in rows] == ["ddpm-zoo", "official-style"]
    ours, baseline = rows
    assert ours["gflop_per_img"] == baseline["gflop_per_img"] > 0
    assert ours["params_m"] == baseline["params_m"]
    assert ours["img_per_s"] > 0 and baseline["img_per_s"] > 0 and ours["mfu_pct"] > 0
    assert ours["speedup_vs_official"] == round(baseline["s_per_step"] / ours["s_per_step"], 2)
    assert "official-style" in result.stdout


def test_train_throughput_exits_non_zero_when_a_measurement_fails(tmp_path):
    output = tmp_path / "throughput.json"
    result = run_benchmark("train_throughput.py", "--presets", "no-such-preset", "--output", str(output))
    assert result.returncode == 1
    assert "error: no measurement for no-such-preset:no, no-such-preset:bf16" in result.stderr
    assert json.loads(output.read_text())["rows"] == []


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
