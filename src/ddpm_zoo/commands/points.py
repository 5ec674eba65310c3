"""`ddpm-zoo sample`, `visualize` and `evaluate` on a 2-D point model (the toy-2d preset's pipelines)."""

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ddpm_zoo import data as data_lib
from ddpm_zoo import point_pictures
from ddpm_zoo import points as points_lib
from ddpm_zoo.errors import UserInputError
from ddpm_zoo.evaluation.points import describe_quality, point_quality, sample_points
from ddpm_zoo.outputs import writing
from ddpm_zoo.pipelines import PointDiffusionPipeline
from ddpm_zoo.scatter import scatter
from ddpm_zoo.schedulers import make_scheduler

DEFAULT_POINTS = 1000
FIELD_TIMESTEPS = (10, 100, 300, 600)


def trained_on(model: str) -> str | None:
    """The generated set a trained folder was trained on (its training_summary.json), if it says so."""
    summary = Path(model) / "training_summary.json"
    try:
        dataset = json.loads(summary.read_text(encoding="utf-8")).get("card", {}).get("dataset")
    except (OSError, ValueError):
        return None
    return dataset if dataset in points_lib.GENERATORS else None


def visualize_points(pipeline: PointDiffusionPipeline, args: argparse.Namespace, output: Path) -> Image.Image | None:
    """The picture `args.kind` asks for, drawn for points (the animation is written to `output` directly)."""
    count = args.num_images or DEFAULT_POINTS
    labels = _labels(pipeline, args.class_labels, count)
    call = {"class_labels": labels.tolist()} if labels is not None else {}
    if args.guidance_scale is not None and labels is not None:
        call["guidance_scale"] = args.guidance_scale
    timesteps = [int(t) for t in args.timesteps.split(",")] if args.timesteps else None
    if args.kind == "forward":
        name = args.dataset_name or trained_on(args.model) or "swiss-roll"
        data = data_lib.load_point_data(name, args.train_data_dir, seed=args.seed).images.numpy()[:count]
        return point_pictures.forward_strip(data, pipeline.scheduler, timesteps, args.seed)
    if args.kind == "vector-field":
        label = None if labels is None else int(labels[0])
        return point_pictures.vector_fields(pipeline, timesteps or list(FIELD_TIMESTEPS), class_label=label)
    frames = point_pictures.reverse_frames(pipeline, count, args.num_inference_steps, args.seed, **call)
    if args.kind == "grid":
        return scatter(frames[-1][1], labels, title=f"{len(frames[-1][1])} samples")
    if args.kind == "reverse-grid":
        return point_pictures.reverse_strip(frames, labels)
    if args.kind == "variance":
        chart = point_pictures.variance_chart(pipeline, frames[-1][1])
        if chart is None:
            raise UserInputError("--kind variance needs a model trained with --variance_type learned_range")
        return chart
    with writing(output):
        output.write_bytes(point_pictures.reverse_gif(frames, labels, args.num_frames))
    return None


def _labels(pipeline: PointDiffusionPipeline, class_labels: str | None, count: int) -> np.ndarray | None:
    """One class per point: the given ones repeated, or every class in turn for a conditional model."""
    if not pipeline.num_classes:
        if class_labels:
            raise UserInputError("--class_labels needs a class-conditional model")
        return None
    if class_labels:
        try:
            given = [pipeline.class_index(label.strip()) for label in class_labels.split(",")]
        except ValueError as error:
            raise UserInputError(str(error)) from None
    else:
        given = list(range(pipeline.num_classes))
    return np.resize(np.array(given), count)


def evaluate_points(
    pipeline: PointDiffusionPipeline,
    args: argparse.Namespace,
    schedulers: list[str | None],
    steps: list[int] | None,
    guidance: list[float | None],
    target: Path,
) -> int:
    """For each scheduler (None: the saved one), step count and guidance scale: the energy distance to fresh data
    against its floor, and the eight Gaussians' mode statistics; printed, and written as JSON to `target`."""
    dataset = args.reference or trained_on(args.model)
    if dataset not in points_lib.GENERATORS:
        raise UserInputError(
            f"point quality compares with a generated set: pass --reference {' | '.join(points_lib.GENERATORS)}"
        )
    saved = pipeline.scheduler
    rows = []
    for name, count, scale in itertools.product(schedulers, steps or [None], guidance):
        pipeline.scheduler = saved if name is None else make_scheduler(name, saved.config)
        found, requested = sample_points(pipeline, args.num_samples, count, scale, args.seed)
        quality = point_quality(found, dataset, requested=requested)
        print(f"{name or 'own'}, steps {count or 'default'}, guidance {scale}: {describe_quality(quality)}")
        rows.append({"scheduler": name or "own", "steps": count, "guidance": scale, **vars(quality)})
    document = {"model": args.model, "reference": dataset, "seed": args.seed, "rows": rows}
    with writing(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(f"results written to {target}")
    return 0


def sample_points_command(pipeline: PointDiffusionPipeline, args: argparse.Namespace, output_dir: Path) -> int:
    """`ddpm-zoo sample` for points: points.csv (x, y and, for a conditional model, the class) and grid.png."""
    count = args.num_images or DEFAULT_POINTS
    labels = _labels(pipeline, args.class_labels, count)
    call = {"class_labels": labels.tolist()} if labels is not None else {"batch_size": count}
    if args.guidance_scale is not None and labels is not None:
        call["guidance_scale"] = args.guidance_scale
    generator = torch.Generator().manual_seed(args.seed)
    found = pipeline(generator=generator, num_inference_steps=args.num_inference_steps, **call).points
    columns = [found[:, 0], found[:, 1]] + ([labels] if labels is not None else [])
    header = "x,y" + (",label" if labels is not None else "")
    with writing(output_dir):
        output_dir.mkdir(parents=True, exist_ok=True)
        formats = ["%.6f", "%.6f"] + (["%d"] if labels is not None else [])
        table = np.stack(columns, axis=1)
        np.savetxt(output_dir / "points.csv", table, fmt=formats, delimiter=",", header=header, comments="")
        scatter(found, labels, title=f"{count} samples").save(output_dir / "grid.png")
    print(f"wrote {count} points to {output_dir / 'points.csv'} and their scatter plot to grid.png")
    return 0
