"""FID/KID (torchmetrics with torch-fidelity's Inception weights) and FD-DINOv2 features (Stein et al.,
2023): optional, used when their packages and weights are present locally. Those packages are imported
where they are used, so the package runs without them."""

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
KID_SUBSET_SEED = 0
DINOV2_CHECKPOINT = "facebook/dinov2-large"


def inception_weights_path() -> Path:
    """Where torch-fidelity keeps its Inception weights (or $DDPM_ZOO_INCEPTION_WEIGHTS)."""
    if os.environ.get("DDPM_ZOO_INCEPTION_WEIGHTS"):
        return Path(os.environ["DDPM_ZOO_INCEPTION_WEIGHTS"])
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE


def inception_unavailable() -> str | None:
    """Why FID/KID cannot run here (one line), or None when torchmetrics and the weights are present."""
    try:
        import torch_fidelity  # noqa: F401
        import torchmetrics.image.fid  # noqa: F401
    except ImportError as error:
        return f"FID/KID skipped: torchmetrics[image] (torch-fidelity) cannot be imported here ({error})"
    path = inception_weights_path()
    if not path.is_file():
        return (
            f"FID/KID skipped: torch-fidelity's Inception weights are not at {path} "
            "(offline; copy them there or set DDPM_ZOO_INCEPTION_WEIGHTS)"
        )
    return None


def float64_device(device: torch.device | str) -> torch.device:
    """Where float64 work runs: `device`, except on Apple MPS, which has no float64 (the CPU then)."""
    device = torch.device(device)
    return torch.device("cpu") if device.type == "mps" else device


class InceptionMetrics:
    """FID and KID from torchmetrics against one reference set; the real features are computed once. They
    accumulate in float64, so on MPS they run on the CPU."""

    def __init__(self, reference: torch.Tensor, device: torch.device | str, batch_size: int = 100):
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance

        weights = str(inception_weights_path())
        device = float64_device(device)
        self.fid = FrechetInceptionDistance(
            feature=2048, reset_real_features=False, feature_extractor_weights_path=weights
        ).to(device)
        self.kid = KernelInceptionDistance(feature=self.fid.inception, reset_real_features=False).to(device)
        self.device = device
        self.batch_size = batch_size
        self.num_real = len(reference)
        self._update(reference, real=True)

    def _update(self, images: torch.Tensor, real: bool) -> None:
        for start in range(0, len(images), self.batch_size):
            batch = images[start : start + self.batch_size].to(self.device)
            batch = batch.expand(-1, 3, -1, -1) if batch.shape[1] == 1 else batch
            self.fid.update(batch, real=real)
            self.kid.update(batch, real=real)

    def __call__(self, generated: torch.Tensor) -> dict[str, float]:
        """FID, KID mean and KID std of uint8 generated images against the reference."""
        self.fid.reset()
        self.kid.reset()
        self._update(generated, real=False)
        self.kid.subset_size = min(1000, len(generated), self.num_real)
        with torch.random.fork_rng(devices=[]):  # KID draws its subsets from torch's global generator
            torch.manual_seed(KID_SUBSET_SEED)
            kid_mean, kid_std = self.kid.compute()
        return {"fid": self.fid.compute().item(), "kid": kid_mean.item(), "kid_std": kid_std.item()}


def load_dinov2(device: torch.device | str) -> tuple[nn.Module | None, str | None]:
    """A local DINOv2 (transformers) for FD-DINOv2, or None and a one-line reason."""
    try:
        import transformers
    except ImportError:
        return None, "FD-DINOv2 skipped: transformers is not installed"
    name = os.environ.get("DDPM_ZOO_DINOV2", DINOV2_CHECKPOINT)
    try:
        model = transformers.AutoModel.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError):
        return None, f"FD-DINOv2 skipped: no local DINOv2 checkpoint {name!r} (set DDPM_ZOO_DINOV2 to one)"
    return model.to(device).eval(), None


@torch.no_grad()
def dinov2_features(
    model: nn.Module, images: torch.Tensor, device: torch.device | str, batch_size: int = 50
) -> torch.Tensor:
    """CLS features (Stein et al., 2023) of uint8 images: bicubic resize to 224, ImageNet normalisation."""
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)
    features = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(device).float() / 255.0
        batch = batch.expand(-1, 3, -1, -1) if batch.shape[1] == 1 else batch
        batch = F.interpolate(batch, size=(224, 224), mode="bicubic", antialias=True).clamp(0, 1)
        features.append(model(pixel_values=(batch - mean) / std).pooler_output.cpu().double())  # no float64 on MPS
    return torch.cat(features)
