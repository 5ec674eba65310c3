"""Pictures of the diffusion process, drawn from test-sized pipelines."""

import pytest
import torch
from conftest import tiny_unet
from diffusers import DDPMScheduler
from PIL import Image

from ddpm_zoo.pipelines import ClassConditionalDDPMPipeline, UnconditionalDDPMPipeline
from ddpm_zoo.schedulers import make_scheduler
from ddpm_zoo.visualize import (
    auto_scale,
    evenly_spaced,
    forward_process,
    forward_strip,
    make_grid,
    model_space,
    noise_level,
    reverse_animation,
    reverse_grid,
    reverse_process_frames,
    sample_grid,
    to_pil,
    upscale,
)

NAMES = "red,green,blue"


pytestmark = pytest.mark.usefixtures("one_thread")


def conditional(scheduler: str = "ddim") -> ClassConditionalDDPMPipeline:
    config = DDPMScheduler(num_train_timesteps=1000).config
    pipeline = ClassConditionalDDPMPipeline(
        unet=tiny_unet(3, 8, num_class_embeds=4), scheduler=make_scheduler(scheduler, config), class_names=NAMES
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def unconditional(scheduler: str = "ddim") -> UnconditionalDDPMPipeline:
    config = DDPMScheduler(num_train_timesteps=1000).config
    pipeline = UnconditionalDDPMPipeline(unet=tiny_unet(1, 8), scheduler=make_scheduler(scheduler, config))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def test_make_grid_keeps_its_layout():
    tiles = [Image.new("L", (8, 8), 255) for _ in range(5)]
    grid = make_grid(tiles, columns=3, padding=2)
    assert grid.size == (3 * 10 + 2, 2 * 10 + 2) and grid.mode == "L"
    assert grid.getpixel((2, 2)) == 255 and grid.getpixel((0, 0)) == 0


def test_to_pil_maps_model_space_to_pixels_and_upscale_is_nearest():
    gray = to_pil(torch.tensor([-1.0, 0.0, 1.0, 3.0]).view(1, 1, 2, 2))[0]
    assert gray.mode == "L" and list(gray.tobytes()) == [0, 128, 255, 255]
    color = to_pil(torch.zeros(2, 3, 4, 4))
    assert color[0].mode == "RGB" and color[0].getpixel((0, 0)) == (128, 128, 128)
    big = upscale(gray, 3)
    assert big.size == (6, 6) and big.getpixel((2, 2)) == 0 and big.getpixel((3, 0)) == 128
    assert auto_scale(28) == 3 and auto_scale(8) > auto_scale(32) >= 1 and auto_scale(1000) == 1


def test_evenly_spaced_steps():
    assert evenly_spaced(1000, 10)[0] == 0 and evenly_spaced(1000, 10)[-1] == 999
    assert len(evenly_spaced(1000, 10)) == 10
    assert evenly_spaced(5, 10) == [0, 1, 2, 3, 4]
    assert evenly_spaced(6, 3) == [0, 3, 5]
    assert evenly_spaced(50, 1) == [49]


def test_forward_strip_layout_and_first_column():
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    images = torch.linspace(-1, 1, 2 * 3 * 8 * 8).view(2, 3, 8, 8)
    timesteps = [0, 100, 500, 999]
    frames = forward_process(images, timesteps, scheduler, torch.Generator().manual_seed(0))
    assert (frames[0] - images).abs().max() < 0.06  # t=0: noise std sqrt(beta_1) = 0.01
    # every frame is q(x_t | x_0) of DDPM eq. 4 with one shared eps: recover eps from t = 999 and compare
    # with diffusers' own add_noise at every t
    abar = scheduler.alphas_cumprod[999].double()
    eps = (frames[-1].double() - abar.sqrt() * images.double()) / (1 - abar).sqrt()
    assert abs(eps.mean()) < 0.15 and abs(eps.std() - 1) < 0.15
    for t, frame in zip(timesteps, frames, strict=True):
        expected = scheduler.add_noise(images.double(), eps, torch.tensor([t]))
        torch.testing.assert_close(frame.double(), expected, rtol=0, atol=1e-5)
    assert noise_level(scheduler, 999) > 0.99 and abs(noise_level(scheduler, 0) - 0.01) < 1e-4
    strip = forward_strip(images, timesteps, scheduler, scale=4, row_labels=["a", "b"])
    assert strip.mode == "RGB" and strip.width > 4 * 32 and strip.height > 2 * 32
    plain = forward_strip(images, timesteps, scheduler, scale=4)
    assert plain.width < strip.width  # no row labels, no label column


def test_reverse_frames_are_x_t_ending_with_the_sample():
    pipeline = conditional("ddim")
    steps, timesteps, frames = reverse_process_frames(
        pipeline, 3, 6, torch.Generator().manual_seed(0), class_labels=[0, 2]
    )
    assert steps == [1, 4, 6] and frames.shape == (3, 2, 3, 8, 8)
    assert timesteps[-1] == 0 and timesteps[0] == int(pipeline.scheduler.timesteps[1])
    final = pipeline(
        class_labels=[0, 2], num_inference_steps=6, generator=torch.Generator().manual_seed(0), output_type="pt"
    ).images
    torch.testing.assert_close((frames[-1] / 2 + 0.5).clamp(0, 1), final)


def test_reverse_frames_of_sigma_schedulers_are_rescaled_to_x_t():
    """Euler keeps x_t / sqrt(abar_t) = x_0 + sigma_t eps: each frame must be that times sqrt(abar_t) at the
    timestep t it belongs to (DDPM eq. 4), and the last frame the sample itself. Trailing spacing keeps the
    timesteps integers, so abar_t is read from the table without interpolation."""
    pipeline = unconditional()
    config = DDPMScheduler(num_train_timesteps=1000, timestep_spacing="trailing").config
    pipeline.scheduler = make_scheduler("euler", config)
    steps, timesteps, frames = reverse_process_frames(pipeline, 4, 8, torch.Generator().manual_seed(0), batch_size=4)
    raw = []

    def keep(pipe, i, t, callback_kwargs):
        raw.append(callback_kwargs["latents"].clone())
        return callback_kwargs

    final = pipeline(
        batch_size=4, num_inference_steps=8, generator=torch.Generator().manual_seed(0), output_type="pt",
        callback_on_step_end=keep,
    ).images  # fmt: skip
    kept = [raw[step - 1] for step in steps]
    abar = pipeline.scheduler.alphas_cumprod
    sigma = float(pipeline.scheduler.sigmas[1])
    assert sigma > 30 and frames[0].std() < 0.1 * sigma  # x_t, not x_t / sqrt(abar_t)
    for t, frame, latents in zip(timesteps[:-1], frames[:-1], kept[:-1], strict=True):
        torch.testing.assert_close(frame, latents * abar[t].sqrt(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(kept[-1], frames[-1])
    torch.testing.assert_close((frames[-1] / 2 + 0.5).clamp(0, 1), final)
    assert torch.equal(model_space(unconditional("ddim").scheduler, frames[0]), frames[0])


def test_reverse_grid_has_a_row_per_class():
    pipeline = conditional()
    grid = reverse_grid(pipeline, num_columns=4, num_inference_steps=4, scale=2)
    three_rows = grid.height
    two = reverse_grid(pipeline, num_columns=4, num_inference_steps=4, class_labels=["red", 1], scale=2)
    assert two.height < three_rows and two.width == grid.width
    samples = reverse_grid(unconditional(), num_columns=3, num_inference_steps=3, num_rows=2, scale=2)
    assert samples.mode == "RGB"


def test_reverse_animation_writes_a_looping_gif(tmp_path):
    path = reverse_animation(
        conditional(), tmp_path / "anim" / "reverse.gif", num_frames=3, fps=5, num_inference_steps=5, scale=2
    )
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.n_frames == 3 and gif.info["loop"] == 0
        assert gif.info["duration"] == 200
        gif.seek(2)
        assert gif.info["duration"] == 1500  # the final samples are held
    with pytest.raises(ValueError, match="fps"):
        reverse_animation(conditional(), tmp_path / "x.gif", fps=0, num_inference_steps=2)


def test_sample_grid_with_labels():
    images = to_pil(torch.zeros(5, 1, 8, 8))
    labelled = sample_grid(images, ["zero", "one", "two", "three", "four"], columns=5, scale=2)
    plain = sample_grid(images, columns=5, scale=2)
    assert labelled.width == plain.width and labelled.height > plain.height
    assert plain.size == (5 * (16 + 4) + 4, 16 + 8)
