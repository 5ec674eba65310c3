"""Bytes a bf16 training step saves for its backward pass, per image and per dtype, on any machine.

Written and read back once per step, the saved activations are a floor on a step's memory traffic. Which
tensors are saved is decided by AOTAutograd's min-cut partitioner, the same on every device, so this runs
on a CPU. One difference is emulated: CUDA autocast runs `group_norm` in fp32 (its output too), CPU
autocast in bf16, so every GroupNorm is replaced by one that upcasts its input and returns fp32, as on CUDA.
Variants: that CUDA-like GroupNorm partitioned as traced ("eager-like") and after Inductor's decompositions
(what `--compile` partitions), and a GroupNorm that returns its input dtype, both ways.

    python benchmarks/saved_activations.py                         # cifar10-ddpm, batch 2
    python benchmarks/saved_activations.py --preset mnist-tiny
"""

import argparse
import collections
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from functorch.compile import aot_function, min_cut_rematerialization_partition
from torch._inductor.decomposition import select_decomp_table

sys.path.insert(0, str(Path(__file__).parent))

from common import machine, print_table, write_json  # noqa: E402
from diffusers import UNet2DModel  # noqa: E402

from ddpm_zoo.config import load_unet_config  # noqa: E402
from ddpm_zoo.presets import get_preset  # noqa: E402

SMALLEST_ACTIVATION = 1024  # elements per image; smaller saved tensors (norm statistics, embeddings) are left out


class CudaLikeGroupNorm(torch.nn.GroupNorm):
    """GroupNorm as CUDA autocast runs it: on the input upcast to fp32, returning fp32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", enabled=False):
            return F.group_norm(x.float(), self.num_groups, self.weight, self.bias, self.eps)


class InputDtypeGroupNorm(CudaLikeGroupNorm):
    """The same statistics in fp32, the output back in the input's dtype (bf16 under autocast)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).to(x.dtype)


def with_group_norm(unet: UNet2DModel, norm_class: type[torch.nn.GroupNorm]) -> UNet2DModel:
    """`unet` with every GroupNorm replaced by `norm_class` (same groups, channels, eps and weights)."""
    for module in list(unet.modules()):
        for name, child in list(module.named_children()):
            if type(child) is torch.nn.GroupNorm:
                norm = norm_class(child.num_groups, child.num_channels, child.eps, child.affine)
                norm.load_state_dict(child.state_dict())
                setattr(module, name, norm)
    return unet


def saved_bytes(unet: UNet2DModel, batch: int, decompose: bool) -> dict[str, tuple[int, int]]:
    """dtype -> (tensors, bytes per image) the partitioned forward graph saves for backward."""
    saved: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])

    def forward_compiler(graph: torch.fx.GraphModule, _inputs) -> torch.fx.GraphModule:
        outputs = next(node for node in graph.graph.nodes if node.op == "output").args[0]
        for node in outputs[1:]:  # the first output is the loss; the rest are saved for backward
            value = node.meta.get("val")
            if isinstance(value, torch.Tensor) and value.numel() >= SMALLEST_ACTIVATION * batch:
                saved[str(value.dtype).removeprefix("torch.")][0] += 1
                saved[str(value.dtype).removeprefix("torch.")][1] += value.numel() * value.element_size()
        return graph

    params = {name: p.detach().requires_grad_() for name, p in unet.named_parameters()}
    config = unet.config
    labels = torch.zeros(batch, dtype=torch.long) if config.num_class_embeds else None

    def step(params: dict, x: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            prediction = torch.func.functional_call(unet, params, (x, t), {"class_labels": labels}).sample
        return F.mse_loss(prediction.float(), noise)

    compiled = aot_function(
        step,
        fw_compiler=forward_compiler,
        bw_compiler=lambda graph, _inputs: graph,
        partition_fn=min_cut_rematerialization_partition,
        decompositions=select_decomp_table() if decompose else None,
    )
    size = (batch, config.in_channels, config.sample_size, config.sample_size)
    compiled(params, torch.randn(size), torch.randint(0, 1000, (batch,)), torch.randn(size)).backward()
    return {dtype: (count, total // batch) for dtype, (count, total) in saved.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="cifar10-ddpm")
    parser.add_argument("--unet_config", help="a UNet2DModel config.json instead of the preset's network")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--output", help="JSON file (default: results/saved_activations-PRESET-cpu.json)")
    args = parser.parse_args()
    unet_config = load_unet_config(args.unet_config) if args.unet_config else dict(get_preset(args.preset).unet)
    rows = []
    for norm_class, group_norm in ((CudaLikeGroupNorm, "fp32 out (CUDA autocast)"), (InputDtypeGroupNorm, "bf16 out")):
        for decompose, partitioned in ((False, "as traced (eager-like)"), (True, "Inductor decompositions")):
            torch.manual_seed(0)
            unet = with_group_norm(UNet2DModel(**unet_config), norm_class).train()
            by_dtype = saved_bytes(unet, args.batch, decompose)
            row = {"group_norm": group_norm, "partitioned": partitioned}
            row["saved_mb_per_img"] = round(sum(b for _, b in by_dtype.values()) / 1e6, 2)
            for dtype, (count, per_image) in sorted(by_dtype.items()):
                row[f"{dtype}_mb"] = round(per_image / 1e6, 2)
                row[f"{dtype}_tensors"] = count
            rows.append(row)
    columns = ["group_norm", "partitioned", "saved_mb_per_img", "float32_mb", "bfloat16_mb", "bool_mb"]
    print_table(rows, columns)
    output = args.output or f"saved_activations-{args.preset}-cpu.json"
    path = write_json(output, {"preset": args.preset, "batch": args.batch, "machine": machine(), "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
