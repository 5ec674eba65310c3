"""The DDPM pipelines with test-sized UNets: schedulers, outputs, class labels, guidance, errors, callbacks."""

import numpy as np
import pytest
import torch
from conftest import tiny_unet
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    ImagePipelineOutput,
)
from PIL import Image

from ddpm_zoo.errors import UserInputError
from ddpm_zoo.pipelines import ClassConditionalDDPMPipeline, UnconditionalDDPMPipeline
from ddpm_zoo.pipelines.pipeline_ddpm_zoo import (
    extrapolate,
    predicted_original_sample,
    prediction_from_original_sample,
)
from ddpm_zoo.presets import DIGIT_NAMES
from ddpm_zoo.publish import save_pipeline_folder
from ddpm_zoo.schedulers import SCHEDULERS, make_scheduler

STEPS = 3


pytestmark = pytest.mark.usefixtures("one_thread")


def unconditional(scheduler: str = "ddpm") -> UnconditionalDDPMPipeline:
    config = DDPMScheduler(num_train_timesteps=1000).config
    pipeline = UnconditionalDDPMPipeline(unet=tiny_unet(1, 8), scheduler=make_scheduler(scheduler, config))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def conditional(scheduler: str = "ddpm", class_names: str | None = ",".join(DIGIT_NAMES)):
    config = DDPMScheduler(num_train_timesteps=1000).config
    pipeline = ClassConditionalDDPMPipeline(
        unet=tiny_unet(3, 8, num_class_embeds=11),
        scheduler=make_scheduler(scheduler, config),
        class_names=class_names,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def training_config(num_train_timesteps: int = 1000, **overrides):
    """A training scheduler config with DDPM's x_0 clip on, given explicitly as the presets give it: an
    in-memory config hands `from_config` only the values its constructor was given."""
    return DDPMScheduler(num_train_timesteps=num_train_timesteps, **{"clip_sample": True, **overrides}).config


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_make_scheduler_is_the_plain_from_config_swap(scheduler):
    """Same betas, prediction type, spacing and x_0 bound as the saved config: nothing added."""
    config = training_config(
        500, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", timestep_spacing="trailing"
    )
    made = make_scheduler(scheduler, config)
    assert type(made) is SCHEDULERS[scheduler]
    assert dict(made.config) == dict(SCHEDULERS[scheduler].from_config(config).config)
    assert (made.config.num_train_timesteps, made.config.beta_schedule, made.config.prediction_type) == (
        500,
        "squaredcos_cap_v2",
        "v_prediction",
    )
    assert made.config.get("clip_sample") is True


def test_a_scheduler_without_its_optional_dependency_is_one_line(monkeypatch):
    def missing(*args, **kwargs):
        raise ImportError("LMSDiscreteScheduler requires the scipy library")

    monkeypatch.setattr(SCHEDULERS["lms"], "from_config", missing)
    with pytest.raises(UserInputError, match="^scheduler 'lms' needs scipy: pip install scipy$"):
        make_scheduler("lms", training_config())
    with pytest.raises(UserInputError, match="unknown scheduler 'plms'; choose one of: ddpm, ddim"):
        make_scheduler("plms", training_config())


SWAP_STEPS = {"ddpm": 4, "heun": 2, "dpmsolver-singlestep": 4, "pndm": 4}


@pytest.mark.parametrize("num_train_timesteps", [1000, 400])
@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_every_scheduler_swaps_in_via_from_config(scheduler, num_train_timesteps):
    """Both pipelines, guided, any training length T: finite images in [0, 1] of the right shape."""
    config = training_config(num_train_timesteps, prediction_type="v_prediction")
    steps = SWAP_STEPS.get(scheduler, 3)
    for pipeline, kwargs, shape in (
        (self_guided([3, 4]), {"batch_size": 2}, (2, 1, 8, 8)),
        (conditional(), {"class_labels": [1, "two"], "guidance_scale": 4.0}, (2, 3, 8, 8)),
    ):
        pipeline.scheduler = SCHEDULERS[scheduler].from_config(config)
        images = pipeline(num_inference_steps=steps, generator=seeded(), output_type="pt", **kwargs).images
        assert images.shape == shape and torch.isfinite(images).all()
        assert 0 <= images.min() and images.max() <= 1


@pytest.mark.parametrize("scheduler,expected_steps", [("ddpm", 400), ("ddim", 50), ("euler", 50)])
def test_default_step_count_fits_any_training_length(scheduler, expected_steps):
    """No `num_inference_steps`: all T timesteps for DDPM (Algorithm 2), 50 for the others; never above T."""
    pipeline = unconditional()
    pipeline.scheduler = SCHEDULERS[scheduler].from_config(training_config(400))
    steps = []
    pipeline(callback_on_step_end=lambda pipe, i, t, kwargs: steps.append(int(t)) or kwargs)
    assert len(steps) == expected_steps
    pipeline.scheduler = SCHEDULERS[scheduler].from_config(training_config(30))
    steps.clear()
    pipeline(callback_on_step_end=lambda pipe, i, t, kwargs: steps.append(int(t)) or kwargs)
    assert len(steps) == 30
    with pytest.raises(ValueError, match="`num_inference_steps` 31 exceeds the 30 timesteps"):
        pipeline(num_inference_steps=31)


PREDICTION_TYPES = ["epsilon", "v_prediction", "sample"]


def in_range_case(prediction_type: str, t: float, seed: int = 0):
    """A pipeline, x_t and the prediction whose x_0 is `x_0` (in [-0.9, 0.9]) at timestep t."""
    pipeline = unconditional()
    pipeline.scheduler = DDIMScheduler.from_config(training_config(prediction_type=prediction_type))
    generator = seeded(seed)
    x_0 = torch.rand((2, 1, 8, 8), generator=generator) * 1.8 - 0.9
    noise = torch.randn((2, 1, 8, 8), generator=generator)
    alpha_bar = float(pipeline.alpha_bar(torch.tensor(t)))
    x_t = alpha_bar**0.5 * x_0 + (1 - alpha_bar) ** 0.5 * noise
    prediction = {
        "epsilon": noise,
        "sample": x_0,
        "v_prediction": alpha_bar**0.5 * noise - (1 - alpha_bar) ** 0.5 * x_0,
    }
    return pipeline, x_t, x_0, prediction[prediction_type], alpha_bar


@pytest.mark.parametrize("t", [0.0, 437.0, 980.4, 999.0])
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_range_keeping_leaves_an_in_range_prediction_unchanged(prediction_type, t):
    pipeline, x_t, x_0, prediction, alpha_bar = in_range_case(prediction_type, t)
    assert torch.equal(pipeline.keep_in_range(prediction, x_t, torch.tensor(t)), prediction)
    implied = predicted_original_sample(prediction, x_t, alpha_bar, prediction_type)
    torch.testing.assert_close(implied, x_0, atol=2e-3 if t >= 980 else 1e-5, rtol=0)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_range_keeping_clips_x0_and_keeps_the_same_x_t(prediction_type):
    """x_0 scaled out of range: the kept prediction implies clamp(x_0, -1, 1) at the same x_t (DDPM eq. 4)."""
    t = 600.0
    pipeline, x_t, x_0, _, alpha_bar = in_range_case(prediction_type, t)
    wide = 3 * x_0
    prediction = prediction_from_original_sample(wide, x_t, alpha_bar, prediction_type)
    kept = pipeline.keep_in_range(prediction, x_t, torch.tensor(t))
    implied = predicted_original_sample(kept, x_t, alpha_bar, prediction_type)
    torch.testing.assert_close(implied, wide.clamp(-1, 1), atol=1e-5, rtol=0)
    assert (implied.abs() <= 1 + 1e-5).all() and (wide.abs() > 1).any()


def test_range_keeping_follows_the_saved_config():
    """`thresholding` -> dynamic thresholding (as DDPMScheduler's own); no bound -> the prediction as it is."""
    t = torch.tensor(600.0)
    pipeline, x_t, x_0, _, alpha_bar = in_range_case("epsilon", 600.0)
    prediction = prediction_from_original_sample(3 * x_0, x_t, alpha_bar, "epsilon")
    config = training_config(thresholding=True, sample_max_value=2.0, dynamic_thresholding_ratio=0.9)
    pipeline.scheduler = EulerDiscreteScheduler.from_config(config)
    implied = predicted_original_sample(pipeline.keep_in_range(prediction, x_t, t), x_t, alpha_bar, "epsilon")
    reference = DDPMScheduler.from_config(config)._threshold_sample(3 * x_0)
    torch.testing.assert_close(implied, reference, atol=1e-5, rtol=0)
    pipeline.scheduler = EulerDiscreteScheduler.from_config(training_config(clip_sample=False))
    assert torch.equal(pipeline.keep_in_range(prediction, x_t, t), prediction)


def test_alpha_bar_interpolates_sigma_between_timesteps():
    """Integer timesteps give the schedule's abar_t; fractional ones the abar of Euler's interpolated sigma."""
    pipeline = unconditional()
    pipeline.scheduler = EulerDiscreteScheduler.from_config(training_config())
    alphas_cumprod = pipeline.scheduler.alphas_cumprod.double()
    assert float(pipeline.alpha_bar(torch.tensor(250))) == pytest.approx(float(alphas_cumprod[250]), rel=1e-12)
    sigmas = ((1 - alphas_cumprod) / alphas_cumprod).sqrt()
    sigma = 0.25 * sigmas[700] + 0.75 * sigmas[701]
    assert float(pipeline.alpha_bar(torch.tensor(700.75))) == pytest.approx(float(1 / (1 + sigma**2)), rel=1e-9)


def test_clipped_ddim_steps_with_a_consistent_noise_estimate():
    """DDIM with `clip_sample` clips x_0 but keeps the unclipped noise estimate; after range-keeping the step
    is the same as an unclipped DDIM step from the in-range x_0 and its own noise estimate."""
    t = 600
    pipeline, x_t, x_0, _, alpha_bar = in_range_case("epsilon", float(t))
    prediction = prediction_from_original_sample(3 * x_0, x_t, alpha_bar, "epsilon")
    clipping = DDIMScheduler.from_config(training_config())
    unclipped = DDIMScheduler.from_config(training_config(clip_sample=False))
    for scheduler in (clipping, unclipped):
        scheduler.set_timesteps(50)
    kept = pipeline.keep_in_range(prediction, x_t, torch.tensor(t))
    consistent = unclipped.step(kept, t, x_t).prev_sample
    torch.testing.assert_close(clipping.step(kept, t, x_t).prev_sample, consistent, atol=1e-5, rtol=0)
    assert (clipping.step(prediction, t, x_t).prev_sample - consistent).abs().max() > 0.1


def test_eta_reaches_ddim_only():
    kwargs = {"batch_size": 2, "num_inference_steps": STEPS, "output_type": "pt"}
    ddim = unconditional("ddim")
    deterministic = ddim(generator=seeded(1), **kwargs).images
    noisy = ddim(generator=seeded(1), eta=1.0, **kwargs).images
    assert (noisy - deterministic).abs().max() > 1e-3
    torch.testing.assert_close(ddim(generator=seeded(1), eta=1.0, **kwargs).images, noisy)
    solver = unconditional("dpmsolver")
    torch.testing.assert_close(
        solver(generator=seeded(1), eta=1.0, **kwargs).images, solver(generator=seeded(1), **kwargs).images
    )
    assert conditional("ddim")(class_labels=[1], eta=0.5, num_inference_steps=STEPS).images
    with pytest.raises(ValueError, match="`eta` must be a number in \\[0, 1\\]"):
        ddim(eta=1.5, **kwargs)


def test_output_types_and_return_dict():
    pipeline = unconditional()
    kwargs = {"batch_size": 2, "num_inference_steps": STEPS}
    pil = pipeline(generator=seeded(), **kwargs).images
    assert len(pil) == 2 and isinstance(pil[0], Image.Image) and pil[0].size == (8, 8) and pil[0].mode == "L"
    array = pipeline(generator=seeded(), output_type="np", **kwargs).images
    tensor = pipeline(generator=seeded(), output_type="pt", **kwargs).images
    assert isinstance(array, np.ndarray) and isinstance(tensor, torch.Tensor)
    np.testing.assert_allclose(array, tensor.permute(0, 2, 3, 1).numpy(), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(pil[0]), (array[0, ..., 0] * 255).round().astype(np.uint8))
    output = pipeline(generator=seeded(), output_type="pt", return_dict=False, **kwargs)
    assert isinstance(output, tuple) and torch.equal(output[0], tensor)
    assert isinstance(pipeline(num_inference_steps=1), ImagePipelineOutput)


def test_same_seed_same_images_and_per_image_generators():
    pipeline = conditional("ddim")
    first = pipeline(class_labels=[0, 1], generator=seeded(5), num_inference_steps=STEPS, output_type="pt")
    again = pipeline(class_labels=[0, 1], generator=seeded(5), num_inference_steps=STEPS, output_type="pt")
    assert torch.equal(first.images, again.images)
    pair = pipeline(
        class_labels=[3, 4], generator=[seeded(1), seeded(2)], num_inference_steps=STEPS, output_type="pt"
    ).images
    alone = pipeline(class_labels=[4], generator=[seeded(2)], num_inference_steps=STEPS, output_type="pt")
    torch.testing.assert_close(pair[1:], alone.images, atol=1e-5, rtol=0)


def test_class_labels_as_names_indices_and_tensors():
    pipeline = conditional()
    expected = torch.tensor([7, 0, 9, 3])
    assert torch.equal(pipeline.encode_class_labels(["seven", 0, "Nine", "3"]), expected)
    assert torch.equal(pipeline.encode_class_labels(torch.tensor([[7, 0], [9, 3]])), expected)
    assert torch.equal(pipeline.encode_class_labels(np.int64(4)), torch.tensor([4]))
    assert pipeline.num_classes == 10 and pipeline.labels[7] == "seven"
    images = pipeline(class_labels="seven", num_inference_steps=1, output_type="pt").images
    assert images.shape == (1, 3, 8, 8)


@pytest.mark.parametrize(
    "labels,message",
    [
        (10, "outside this model's classes 0..9"),
        (-1, "outside"),
        ([0, 12], "outside"),
        ("eleven", "Unknown class name 'eleven'"),
        ([], "at least one class"),
        (True, "must be an integer index or a class name"),
        (2.0, "must be an integer index or a class name"),
    ],
)
def test_bad_class_labels(labels, message):
    with pytest.raises(ValueError, match=message):
        conditional()(class_labels=labels, num_inference_steps=1)


def test_class_names_are_one_string_and_their_spaces_are_dropped():
    pipeline = conditional(class_names="cat, dog")
    assert pipeline.labels == ["cat", "dog"] and pipeline.class_index(" Dog") == 1
    with pytest.raises(ValueError, match="one comma-separated string"):
        conditional(class_names=["cat", "dog"])


def test_names_need_class_names():
    with pytest.raises(ValueError, match="none \\(use integers\\)"):
        conditional(class_names=None)(class_labels="seven", num_inference_steps=1)


@pytest.mark.parametrize("guidance_scale", [-0.5, float("nan"), float("inf"), "3"])
def test_bad_guidance_scale(guidance_scale):
    with pytest.raises(ValueError, match="guidance_scale"):
        conditional()(class_labels=[0], guidance_scale=guidance_scale, num_inference_steps=1)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": -2}, "batch_size"),
        ({"batch_size": 1.5}, "batch_size"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"output_type": "latent"}, "output_type"),
        ({"callback_on_step_end_tensor_inputs": ["noise_pred"]}, "callback_on_step_end_tensor_inputs"),
    ],
)
def test_bad_common_inputs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        unconditional()(**{"num_inference_steps": 1, **kwargs})


@pytest.mark.parametrize("num_class_embeds", [None, 1])
def test_conditional_pipeline_needs_class_embeddings(num_class_embeds):
    unet = tiny_unet(1, 8, num_class_embeds=num_class_embeds)
    pipeline = ClassConditionalDDPMPipeline(unet=unet, scheduler=DDPMScheduler())
    with pytest.raises(ValueError, match=f"has `num_class_embeds` {num_class_embeds}; .* null class"):
        pipeline(class_labels=[0], num_inference_steps=1)


def test_conditional_batch_size_repeats_one_label():
    pipeline = conditional("ddim")
    kwargs = {"num_inference_steps": STEPS, "output_type": "pt"}
    repeated = pipeline(class_labels="seven", batch_size=3, generator=[seeded(1), seeded(2), seeded(3)], **kwargs)
    listed = pipeline(class_labels=[7, 7, 7], generator=[seeded(1), seeded(2), seeded(3)], **kwargs)
    assert repeated.images.shape == (3, 3, 8, 8)
    torch.testing.assert_close(repeated.images, listed.images)
    assert pipeline(class_labels=[1, 2], batch_size=2, **kwargs).images.shape[0] == 2
    with pytest.raises(ValueError, match="`batch_size` 3 differs from the 2 `class_labels`"):
        pipeline(class_labels=[1, 2], batch_size=3, num_inference_steps=1)
    with pytest.raises(ValueError, match="batch_size"):
        pipeline(class_labels=1, batch_size=0, num_inference_steps=1)


def test_a_list_of_generators_must_match_the_batch():
    """As diffusers: one generator per image, or a list of one standing for a single generator."""
    kwargs = {"num_inference_steps": STEPS, "output_type": "pt"}
    guided = self_guided([2, 3])
    torch.testing.assert_close(
        guided(batch_size=3, generator=[seeded(4)], **kwargs).images,
        guided(batch_size=3, generator=seeded(4), **kwargs).images,
    )
    for call in (
        lambda: guided(batch_size=3, generator=[seeded(1), seeded(2)], **kwargs),
        lambda: guided(batch_size=2, generator=[seeded(1), seeded(2), seeded(3)], **kwargs),
        lambda: unconditional()(batch_size=3, generator=[seeded(1), seeded(2)], **kwargs),
        lambda: conditional()(class_labels=[1, 2, 3], generator=[seeded(1), seeded(2)], **kwargs),
    ):
        with pytest.raises(ValueError, match="list of generators of length"):
            call()


def test_callback_sees_every_step_down_to_t0_and_may_replace_latents():
    pipeline = unconditional("ddpm")
    seen = []

    def callback(pipe, i, t, kwargs):
        seen.append((i, int(t), kwargs["latents"].shape))
        return {"latents": torch.zeros_like(kwargs["latents"])} if i == STEPS - 1 else kwargs

    images = pipeline(batch_size=2, num_inference_steps=STEPS, output_type="pt", callback_on_step_end=callback).images
    assert [i for i, _, _ in seen] == list(range(STEPS))
    assert seen[-1][1] == 0 and all(shape == (2, 1, 8, 8) for _, _, shape in seen)
    assert torch.equal(images, torch.full_like(images, 0.5))  # zero latents are mid-grey


def test_saved_folder_loads_with_plain_diffusers(tmp_path):
    """The published layout: pipeline.py remote code, class names kept, same images for the same seed."""
    pipeline = conditional("ddpm")
    save_pipeline_folder(pipeline, tmp_path / "model")
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "model", trust_remote_code=True)
    assert type(loaded).__name__ == "ClassConditionalDDPMPipeline"
    assert loaded.labels == list(DIGIT_NAMES)
    loaded.set_progress_bar_config(disable=True)
    kwargs = {"class_labels": ["seven", 1], "guidance_scale": 2.0, "num_inference_steps": STEPS}
    expected = pipeline(generator=seeded(3), output_type="pt", **kwargs).images
    torch.testing.assert_close(loaded(generator=seeded(3), output_type="pt", **kwargs).images, expected)


def autoguided(autoguidance_scale: float = 2.5) -> UnconditionalDDPMPipeline:
    """An unconditional pipeline whose guide is a perturbed copy of its UNet."""
    config = DDPMScheduler(num_train_timesteps=1000).config
    guide = tiny_unet(1, 8)
    with torch.no_grad():
        for parameter in guide.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=seeded(1)))
    pipeline = UnconditionalDDPMPipeline(
        unet=tiny_unet(1, 8),
        scheduler=make_scheduler("ddim", config),
        guide_unet=guide,
        autoguidance_scale=autoguidance_scale,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def count_calls(module: torch.nn.Module) -> list[int]:
    calls = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_autoguidance_extrapolates_from_the_guide_to_the_main_prediction():
    """Karras et al. (2024), eq. 2: D_w = D_guide + w (D - D_guide), replayed by hand with DDIM."""
    pipeline = autoguided()
    images = pipeline(batch_size=2, num_inference_steps=STEPS, generator=seeded(5), output_type="pt").images
    scheduler = make_scheduler("ddim", pipeline.scheduler.config)
    scheduler.set_timesteps(STEPS)
    latents = torch.randn((2, 1, 8, 8), generator=seeded(5))
    with torch.no_grad():
        for t in scheduler.timesteps:
            main, guide = pipeline.unet(latents, t).sample, pipeline.guide_unet(latents, t).sample
            guided = pipeline.keep_in_range(guide + 2.5 * (main - guide), latents, t)
            latents = scheduler.step(guided, t, latents).prev_sample
    torch.testing.assert_close(images, (latents / 2 + 0.5).clamp(0, 1))
    unguided = pipeline(
        batch_size=2, num_inference_steps=STEPS, generator=seeded(5), output_type="pt", guidance_scale=1
    ).images
    assert (unguided - images).abs().max() > 1e-3


def test_guidance_scale_defaults_to_the_saved_scale_and_one_skips_the_guide():
    pipeline = autoguided(autoguidance_scale=2.5)
    main_calls, guide_calls = count_calls(pipeline.unet), count_calls(pipeline.guide_unet)
    default = pipeline(batch_size=1, num_inference_steps=STEPS, generator=seeded(), output_type="pt").images
    assert len(main_calls) == len(guide_calls) == STEPS
    explicit = pipeline(
        batch_size=1, num_inference_steps=STEPS, generator=seeded(), output_type="pt", guidance_scale=2.5
    ).images
    torch.testing.assert_close(default, explicit)
    pipeline(batch_size=1, num_inference_steps=STEPS, guidance_scale=1)
    assert len(main_calls) == 3 * STEPS and len(guide_calls) == 2 * STEPS


@pytest.mark.parametrize("guidance_scale", [-1.0, float("nan"), True])
def test_bad_autoguidance_scale(guidance_scale):
    with pytest.raises(ValueError, match="guidance_scale"):
        autoguided()(batch_size=1, num_inference_steps=1, guidance_scale=guidance_scale)


def test_an_autoguidance_scale_without_a_guide_unet_is_refused():
    with pytest.raises(ValueError, match="`autoguidance_scale` 3.0 needs a `guide_unet`"):
        UnconditionalDDPMPipeline(unet=tiny_unet(1, 8), scheduler=DDPMScheduler(), autoguidance_scale=3.0)


def test_guidance_without_a_guide_unet_is_refused():
    pipeline = unconditional()
    with pytest.raises(ValueError, match="needs a `guide_unet`"):
        pipeline(batch_size=1, num_inference_steps=1, guidance_scale=2.0)
    assert pipeline(batch_size=1, num_inference_steps=1, guidance_scale=1, output_type="pt").images.shape[0] == 1


@pytest.mark.parametrize("with_guide", [True, False])
def test_saved_unconditional_folder_round_trips_with_and_without_a_guide(tmp_path, with_guide):
    pipeline = autoguided(autoguidance_scale=2.5) if with_guide else unconditional("ddim")
    save_pipeline_folder(pipeline, tmp_path / "model")
    assert (tmp_path / "model" / "guide_unet" / "diffusion_pytorch_model.safetensors").exists() == with_guide
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "model", trust_remote_code=True)
    assert type(loaded).__name__ == "UnconditionalDDPMPipeline"
    assert (loaded.guide_unet is not None) == with_guide
    assert loaded.config.autoguidance_scale == (2.5 if with_guide else 1.0)
    loaded.set_progress_bar_config(disable=True)
    kwargs = {"batch_size": 2, "num_inference_steps": STEPS, "output_type": "pt"}
    expected = pipeline(generator=seeded(3), **kwargs).images
    torch.testing.assert_close(loaded(generator=seeded(3), **kwargs).images, expected)


def self_guided(cluster_sizes: list[int], self_guidance_scale: float = 2.0) -> UnconditionalDDPMPipeline:
    """An unconditional pipeline whose UNet is conditioned on len(cluster_sizes) clusters plus the null one."""
    config = DDPMScheduler(num_train_timesteps=1000).config
    pipeline = UnconditionalDDPMPipeline(
        unet=tiny_unet(1, 8, num_class_embeds=len(cluster_sizes) + 1),
        scheduler=make_scheduler("ddim", config),
        cluster_sizes=cluster_sizes,
        self_guidance_scale=self_guidance_scale,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def test_self_guidance_is_classifier_free_guidance_towards_a_drawn_cluster():
    """Hu et al. (2023): draw c ~ p(c) (here always cluster 1), then eps(x, null) + w (eps(x, c) - eps(x, null)),
    replayed by hand with DDIM; the generator draws the clusters first, then x_T."""
    pipeline = self_guided([0, 7, 0], self_guidance_scale=2.0)
    images = pipeline(batch_size=2, num_inference_steps=STEPS, generator=seeded(5), output_type="pt").images
    generator = seeded(5)
    clusters = torch.multinomial(torch.tensor([0.0, 7.0, 0.0], dtype=torch.float64), 2, True, generator=generator)
    assert clusters.tolist() == [1, 1]
    scheduler = make_scheduler("ddim", pipeline.scheduler.config)
    scheduler.set_timesteps(STEPS)
    latents = torch.randn((2, 1, 8, 8), generator=generator)
    with torch.no_grad():
        for t in scheduler.timesteps:
            cond = pipeline.unet(latents, t, class_labels=clusters).sample
            null = pipeline.unet(latents, t, class_labels=torch.full_like(clusters, 3)).sample
            guided = pipeline.keep_in_range(null + 2.0 * (cond - null), latents, t)
            latents = scheduler.step(guided, t, latents).prev_sample
    torch.testing.assert_close(images, (latents / 2 + 0.5).clamp(0, 1))
    calls = count_calls(pipeline.unet)
    unguided = pipeline(
        batch_size=2, num_inference_steps=STEPS, generator=seeded(5), output_type="pt", guidance_scale=0
    ).images
    assert len(calls) == STEPS and (unguided - images).abs().max() > 1e-3
    pipeline(batch_size=2, num_inference_steps=STEPS)
    assert len(calls) == 2 * STEPS  # guided: one batched call per step


def test_clusters_are_drawn_in_proportion_to_their_sizes():
    pipeline = self_guided([1, 0, 3])
    clusters = pipeline.draw_clusters(4000, seeded(0))
    shares = torch.bincount(clusters, minlength=3).double() / 4000
    assert shares[1] == 0 and abs(shares[0] - 0.25) < 0.03 and abs(shares[2] - 0.75) < 0.03
    per_image = pipeline.draw_clusters(3, [seeded(1), seeded(1), seeded(2)])
    assert per_image.shape == (3,) and per_image[0] == per_image[1]


@pytest.mark.parametrize(
    "cluster_sizes, num_class_embeds, message",
    [
        ([3, 4], 2, "2 clusters need a UNet with num_class_embeds = 3"),
        ([3, 4], None, "2 clusters need a UNet with num_class_embeds = 3"),
        ([0, 0], 3, "not all 0"),
        ([2, -1], 3, "non-negative integers"),
    ],
)
def test_bad_cluster_sizes_are_refused(cluster_sizes, num_class_embeds, message):
    unet = tiny_unet(1, 8, num_class_embeds=num_class_embeds)
    with pytest.raises(ValueError, match=message):
        UnconditionalDDPMPipeline(unet=unet, scheduler=DDPMScheduler(), cluster_sizes=cluster_sizes)


def test_a_pipeline_is_autoguided_or_self_guided_not_both():
    with pytest.raises(ValueError, match="either autoguided"):
        UnconditionalDDPMPipeline(
            unet=tiny_unet(1, 8, num_class_embeds=3),
            scheduler=DDPMScheduler(),
            guide_unet=tiny_unet(1, 8),
            cluster_sizes=[1, 1],
        )


def test_saved_self_guided_folder_round_trips(tmp_path):
    from ddpm_zoo.loading import load_pipeline

    pipeline = self_guided([5, 2, 3], self_guidance_scale=1.5)
    save_pipeline_folder(pipeline, tmp_path / "model")
    kwargs = {"batch_size": 3, "num_inference_steps": STEPS, "output_type": "pt"}
    expected = pipeline(generator=seeded(3), **kwargs).images
    for loaded in (
        DiffusionPipeline.from_pretrained(tmp_path / "model", trust_remote_code=True),
        load_pipeline(str(tmp_path / "model")),
    ):
        assert loaded.config.cluster_sizes == [5, 2, 3] and loaded.config.self_guidance_scale == 1.5
        loaded.set_progress_bar_config(disable=True)
        torch.testing.assert_close(loaded(generator=seeded(3), **kwargs).images, expected)


def learned_variance(scheduler_class=DDPMScheduler) -> UnconditionalDDPMPipeline:
    """A self-guided pipeline whose UNet outputs the mean and the variance interpolation v (2C channels)."""
    unet = tiny_unet(1, 8, num_class_embeds=3, out_channels=2)
    config = training_config(variance_type="learned_range")
    pipeline = UnconditionalDDPMPipeline(
        unet=unet, scheduler=scheduler_class.from_config(config), cluster_sizes=[1, 1], self_guidance_scale=2.0
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.mark.parametrize("scheduler", ["ddpm", "ddim", "dpmsolver", "euler", "heun"])
def test_learned_variance_reaches_only_the_schedulers_that_read_it(scheduler):
    """DDPM with `variance_type="learned_range"` steps with all 2C channels; every other scheduler the mean."""
    pipeline = learned_variance(SCHEDULERS[scheduler])
    widths = []
    step = pipeline.scheduler.step
    pipeline.scheduler.step = lambda model_output, *args, **kwargs: (
        widths.append(model_output.shape[1]) or step(model_output, *args, **kwargs)
    )
    images = pipeline(batch_size=2, num_inference_steps=4, generator=seeded(), output_type="pt").images
    assert images.shape == (2, 1, 8, 8) and torch.isfinite(images).all()
    assert set(widths) == {2 if scheduler == "ddpm" else 1}


def test_guidance_combines_the_mean_halves_and_keeps_the_conditional_variance():
    conditional_output = torch.randn(3, 4, 5, 5, generator=seeded(1))
    unconditional_output = torch.randn(3, 4, 5, 5, generator=seeded(2))
    guided = extrapolate(unconditional_output, conditional_output, 3.0, channels=2)
    expected_mean = unconditional_output[:, :2] + 3.0 * (conditional_output[:, :2] - unconditional_output[:, :2])
    torch.testing.assert_close(guided[:, :2], expected_mean)
    assert torch.equal(guided[:, 2:], conditional_output[:, 2:])
    for scale, expected in ((1.0, conditional_output), (0.0, unconditional_output)):
        torch.testing.assert_close(
            extrapolate(unconditional_output, conditional_output, scale, 2)[:, :2], expected[:, :2]
        )


def test_range_keeping_bounds_the_mean_half_only():
    pipeline = learned_variance()
    t = torch.tensor(600.0)
    x_t = torch.randn(2, 1, 8, 8, generator=seeded(3))
    output = torch.cat([5 * torch.randn(2, 1, 8, 8, generator=seeded(4)), torch.rand(2, 1, 8, 8) * 2 - 1], dim=1)
    kept = pipeline.keep_in_range(output, x_t, t)
    alpha_bar = float(pipeline.alpha_bar(t))
    x_0 = predicted_original_sample(kept[:, :1], x_t, alpha_bar, "epsilon")
    assert x_0.abs().max() <= 1 + 1e-5 and not torch.equal(kept[:, :1], output[:, :1])
    assert torch.equal(kept[:, 1:], output[:, 1:])


def test_unconditional_pipeline_golden_slice():
    """Pinned pixels of a seeded test-sized self-guided model: a change to the uploaded pipeline file that
    moves the samples shows here (as diffusers' pipeline tests pin theirs)."""
    config = training_config(prediction_type="v_prediction")
    pipeline = UnconditionalDDPMPipeline(
        unet=tiny_unet(1, 8, num_class_embeds=3),
        scheduler=DDPMScheduler.from_config(config),
        cluster_sizes=[2, 5],
        self_guidance_scale=3.0,
    )
    pipeline.set_progress_bar_config(disable=True)
    images = pipeline(batch_size=2, num_inference_steps=5, generator=seeded(0), output_type="np").images
    expected = [1.0, 0.5431, 0.4474, 0.9959, 0.6938, 0.3644, 0.2969, 0.0, 0.0987]
    assert images.shape == (2, 8, 8, 1)
    np.testing.assert_allclose(images[1, -3:, -3:, 0].flatten(), expected, atol=1e-3)


def test_class_conditional_pipeline_golden_slice():
    config = training_config(prediction_type="v_prediction")
    pipeline = ClassConditionalDDPMPipeline(
        unet=tiny_unet(3, 8, num_class_embeds=11),
        scheduler=DDIMScheduler.from_config(config),
        class_names="a,b,c,d,e,f,g,h,i,j",
    )
    pipeline.set_progress_bar_config(disable=True)
    images = pipeline(class_labels=[7, "b"], num_inference_steps=5, generator=seeded(0), output_type="np").images
    expected = [0.5056, 0.9452, 0.0177, 0.9307, 1.0, 0.8074, 0.2898, 0.0, 0.0658]
    assert images.shape == (2, 8, 8, 3)
    np.testing.assert_allclose(images[0, -3:, -3:, -1].flatten(), expected, atol=1e-3)
