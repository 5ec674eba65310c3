"""The baseline: the same UNet fed and stepped the way diffusers' official
`examples/unconditional_image_generation/train_unconditional.py` does it.

Per-sample PIL transforms (Resize, CenterCrop, RandomHorizontalFlip, ToTensor, Normalize; written with
PIL and numpy here, since torchvision does not import beside this torch) run through a `datasets`
`set_transform` and a shuffled DataLoader; each step reads the loss with `.item()` for the progress bar,
and the EMA uses `EMAModel`'s default per-parameter update. The loop body mirrors the example's.
The example trains unconditional UNets only; a config with class embeddings (the self-guided mnist-tiny
preset's) gets uniformly drawn labels, so the baseline runs the same network as ddpm-zoo.
"""

import random
from collections.abc import Iterator

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from PIL import Image


def pil_augmentations(resolution: int, channels: int, random_flip: bool):
    """torchvision's Resize(BILINEAR) + CenterCrop + RandomHorizontalFlip + ToTensor + Normalize([0.5], [0.5])."""

    def augment(image: Image.Image) -> torch.Tensor:
        image = image.convert("L" if channels == 1 else "RGB")
        scale = resolution / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BILINEAR)
        left, top = (image.width - resolution) // 2, (image.height - resolution) // 2
        image = image.crop((left, top, left + resolution, top + resolution))
        if random_flip and random.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        array = np.asarray(image, dtype=np.float32) / 255.0
        tensor = torch.from_numpy(array[None] if channels == 1 else array.transpose(2, 0, 1).copy())
        return (tensor - 0.5) / 0.5

    return augment


class OfficialStyleTrainer:
    """One optimizer step at a time, exactly as the official example's loop body does it."""

    def __init__(
        self,
        accelerator: Accelerator,
        unet_config: dict,
        dataset: datasets.Dataset,
        image_column: str,
        batch_size: int,
        random_flip: bool,
        num_workers: int = 0,
    ):
        self.accelerator = accelerator
        resolution, channels = unet_config["sample_size"], unet_config["in_channels"]
        augment = pil_augmentations(resolution, channels, random_flip)

        def transform_images(examples):
            return {"input": [augment(image) for image in examples[image_column]]}

        dataset = dataset.with_transform(transform_images)
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers)
        model = UNet2DModel(**unet_config)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
        lr_scheduler = get_scheduler("cosine", optimizer=optimizer, num_warmup_steps=500, num_training_steps=10**6)
        self.model, self.optimizer, self.loader, self.lr_scheduler = accelerator.prepare(
            model, optimizer, loader, lr_scheduler
        )
        self.ema_model = EMAModel(
            self.model.parameters(),
            decay=0.9999,
            use_ema_warmup=True,
            inv_gamma=1.0,
            power=3 / 4,
            model_cls=UNet2DModel,
            model_config=model.config,
        )
        self.noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
        self.num_class_embeds = unet_config.get("num_class_embeds")
        self.batches = self._forever()
        self.global_step = 0

    def _forever(self) -> Iterator[dict]:
        while True:
            yield from self.loader

    def step(self) -> dict:
        accelerator, model = self.accelerator, self.model
        batch = next(self.batches)
        clean_images = batch["input"].to(torch.float32)
        noise = torch.randn(clean_images.shape, dtype=torch.float32, device=clean_images.device)
        bsz = clean_images.shape[0]
        timesteps = torch.randint(
            0, self.noise_scheduler.config.num_train_timesteps, (bsz,), device=clean_images.device
        ).long()
        noisy_images = self.noise_scheduler.add_noise(clean_images, noise, timesteps)
        class_labels = None
        if self.num_class_embeds:
            class_labels = torch.randint(0, self.num_class_embeds, (bsz,), device=clean_images.device)
        with accelerator.accumulate(model):
            model_output = model(noisy_images, timesteps, class_labels).sample
            loss = F.mse_loss(model_output.float(), noise.float())
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), 1.0)
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad()
        if accelerator.sync_gradients:
            self.ema_model.step(model.parameters())
            self.global_step += 1
        logs = {"loss": loss.detach().item(), "lr": self.lr_scheduler.get_last_lr()[0], "step": self.global_step}
        logs["ema_decay"] = self.ema_model.cur_decay_value
        return logs
