"""The ddpm-zoo recipes: network, noise schedule, data and training defaults, in one registry."""

from dataclasses import dataclass, field
from typing import Any

from diffusers import ModelMixin, UNet2DModel

from ddpm_zoo.errors import UserInputError
from ddpm_zoo.models import PointDenoiser
from ddpm_zoo.points import MODE_NAMES

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass(frozen=True)
class DatasetInfo:
    """What a model card says about a dataset: its Hub id, license and attribution."""

    hub_id: str
    license: str
    attribution: str


MNIST_INFO = DatasetInfo(
    hub_id="ylecun/mnist",
    license="cc-by-sa-3.0",
    attribution="MNIST by Yann LeCun, Corinna Cortes and Christopher J.C. Burges (CC BY-SA 3.0).",
)
TOY_INFO = DatasetInfo(
    hub_id="",
    license="apache-2.0",
    attribution="2-D points from ddpm-zoo's seeded generators (the swiss roll as in Sohl-Dickstein et al., 2015).",
)
CIFAR10_INFO = DatasetInfo(
    hub_id="uoft-cs/cifar10",
    license="unknown",
    attribution="CIFAR-10 by Alex Krizhevsky, Vinod Nair and Geoffrey Hinton (University of Toronto).",
)


@dataclass(frozen=True)
class Preset:
    """A complete recipe: the network (`network` built from the config `unet`) and `DDPMScheduler` configs plus
    data and training defaults.

    `training` maps `TrainingConfig` field names to this preset's defaults; any option given on the
    command line overrides them. `data_kind` is "images" or "points" (2-D points, the toy).
    """

    name: str
    description: str
    unet: dict[str, Any]
    scheduler: dict[str, Any]
    training: dict[str, Any]
    dataset: DatasetInfo
    class_names: tuple[str, ...] = ()
    tags: tuple[str, ...] = field(default_factory=tuple)
    network: type[ModelMixin] = UNet2DModel
    data_kind: str = "images"

    @property
    def card_template(self) -> str:
        """File name of this preset's model card template in `model_cards/`."""
        return f"{self.name}.md"


def _three_level_28px(channels: int) -> dict[str, Any]:
    """A 1.1 M-parameter UNet for 28 px digits: 28 -> 14 -> 7, self-attention only at 7x7."""
    return {
        "sample_size": 28,
        "in_channels": channels,
        "out_channels": channels,
        "block_out_channels": (32, 64, 64),
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        "up_block_types": ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        "attention_head_dim": None,
    }


# DDPM's linear schedule (Ho et al., 2020, Sec. 4) with x_0 clipped to the data range while sampling. `clip_sample` is
# given explicitly: `from_config` hands a swapped-in scheduler only the values a config was built with, and the
# pipelines read it to keep x_0 in range under any scheduler.
DDPM_SCHEDULE = {"num_train_timesteps": 1000, "beta_schedule": "linear", "clip_sample": True}

_DIGIT_TRAINING = {
    "dataset_name": "mnist-5k",
    "random_flip": False,
    "train_batch_size": 32,
    "max_train_steps": 1300,
    "learning_rate": 2e-3,
    "lr_scheduler": "cosine",
    "lr_warmup_steps": 100,
    "ema_max_decay": 0.999,
    "prediction_type": "v_prediction",
    "snr_gamma": 5.0,
    "timestep_sampling": "importance",
    "mixed_precision": "bf16",
    "checkpointing_steps": 500,
    "save_images_steps": 500,
}

# Sized to finish, start-up included, in about a minute on two CPU cores.
TOY_TRAINING = {
    "dataset_name": "swiss-roll",
    "train_batch_size": 256,
    "max_train_steps": 3000,
    "learning_rate": 2e-3,
    "lr_scheduler": "cosine",
    "lr_warmup_steps": 100,
    "adam_weight_decay": 0.0,
    "ema_max_decay": 0.995,
    "mixed_precision": "no",
    "checkpointing_steps": 3000,
    "save_images_steps": 1000,
    "num_sample_images": 2000,
    "logging_steps": 100,
    "num_cpu_threads": 1,  # a 2-D MLP's small matrices gain nothing from more threads
}

PRESETS: dict[str, Preset] = {
    "mnist-tiny": Preset(
        name="mnist-tiny",
        description="A 1.1 M-parameter DDPM for 28x28 grayscale digits, sized to train on a laptop CPU.",
        unet=_three_level_28px(channels=1),
        scheduler=DDPM_SCHEDULE,
        training={**_DIGIT_TRAINING, "self_guidance_clusters": 50},
        dataset=MNIST_INFO,
        class_names=DIGIT_NAMES,
        tags=("mnist",),
    ),
    "cifar10-ddpm": Preset(
        name="cifar10-ddpm",
        description="The DDPM paper's 35.7 M-parameter CIFAR-10 network (Ho et al., 2020, Appendix B).",
        unet={
            "sample_size": 32,
            "in_channels": 3,
            "out_channels": 3,
            "block_out_channels": (128, 256, 256, 256),
            "layers_per_block": 2,
            "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
            "up_block_types": ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
            # One head over all 256 channels, as the paper's attn_block (diffusers' default head size of 8
            # would make 32 heads: the same parameters, more and smaller attention matrices).
            "attention_head_dim": 256,
            "dropout": 0.1,
        },
        scheduler=DDPM_SCHEDULE,
        training={
            "dataset_name": "uoft-cs/cifar10",
            "random_flip": True,
            "train_batch_size": 128,
            "max_train_steps": 800_000,
            "learning_rate": 2e-4,
            "lr_scheduler": "constant",
            "lr_warmup_steps": 5000,
            "adam_weight_decay": 0.0,
            "max_grad_norm": 1.0,
            "ema_max_decay": 0.9999,
            "checkpointing_steps": 10_000,
            "save_images_steps": 10_000,
        },
        dataset=CIFAR10_INFO,
        class_names=CIFAR10_NAMES,
        tags=("cifar10",),
    ),
    "colored-mnist": Preset(
        name="colored-mnist",
        description="A DDPM for 28x28 digits tinted in named colors, conditioned on digit and color with composable "
        "classifier-free guidance.",
        unet=_three_level_28px(channels=3),
        scheduler=DDPM_SCHEDULE,
        # Digit and color, each left out (its null value) for 15 % of the images, independently; the additive
        # label embedding lets the null rows learn from every image that drops either label. Adam's beta2 = 0.99
        # follows the second moments faster in a short run. Two labels need more images than mnist-tiny's run.
        training={
            **_DIGIT_TRAINING,
            "max_train_steps": 1600,
            "adam_beta2": 0.99,
            "colorize": True,
            "label_columns": "label,color",
            "cond_drop_prob": 0.15,
        },
        dataset=MNIST_INFO,
        class_names=DIGIT_NAMES,
        tags=("mnist", "colored-mnist"),
    ),
    "toy-2d": Preset(
        name="toy-2d",
        description="An MLP DDPM on 2-D points (swiss roll, two moons, eight Gaussians, checkerboard) that trains in "
        "seconds.",
        unet={"in_channels": 2, "out_channels": 2, "hidden_size": 128, "num_blocks": 3, "time_embedding_dim": 32},
        # The points are not bounded to [-1, 1], so x_0 is not clipped while sampling.
        scheduler={"num_train_timesteps": 1000, "beta_schedule": "linear", "clip_sample": False},
        training=TOY_TRAINING,
        dataset=TOY_INFO,
        class_names=MODE_NAMES,
        tags=("toy-2d",),
        network=PointDenoiser,
        data_kind="points",
    ),
}

CONDITIONAL_PRESET = "colored-mnist"
UNCONDITIONAL_PRESET = "mnist-tiny"


def get_preset(name: str) -> Preset:
    """Look a preset up by name; the error lists the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise UserInputError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None
