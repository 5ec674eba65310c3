"""Reporting results: the text table, the results JSON written next to the model, and the model card's
model-index entries."""

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult

from ddpm_zoo import __version__
from ddpm_zoo.cards import refresh_model_card
from ddpm_zoo.data import EMBEDDED_MNIST
from ddpm_zoo.evaluation.classifier import classifier_metadata
from ddpm_zoo.evaluation.metrics import CONFIDENCE_THRESHOLD
from ddpm_zoo.evaluation.references import EvaluationContext
from ddpm_zoo.outputs import writing

RESULTS_FILE = "eval_results.json"
TASK_TYPE = "unconditional-image-generation"

TABLE_COLUMNS = (
    ("scheduler", "scheduler", "{}"),
    ("num_inference_steps", "steps", "{}"),
    ("guidance_scale", "guidance", "{:g}"),
    ("conditions", "requested", "{}"),
    ("conditional_accuracy", "cond. acc.", "{:.3f}"),
    ("recognisability", "recognisable", "{:.3f}"),
    ("fd_digits", "FD (digits)", "{:.3f}"),
    ("color_accuracy", "color acc.", "{:.3f}"),
    ("fid", "FID", "{:.2f}"),
    ("kid", "KID", "{:.4f}"),
    ("fd_dinov2", "FD-DINOv2", "{:.1f}"),
    ("samples_per_second", "samples/s", "{:.1f}"),
)


def format_table(rows: Sequence[dict[str, Any]], header: bool = True, like: Sequence[dict[str, Any]] = ()) -> str:
    """Rows as a fixed-width text table (Markdown-compatible); columns that neither `rows` nor the rows
    `like` (printed before, in the same table) have are left out."""
    columns = [c for c in TABLE_COLUMNS if any(row.get(c[0]) is not None for row in (*rows, *like))]
    widths = [max(len(title), 9) for _, title, _ in columns]
    lines = []
    if header:
        lines.append("| " + " | ".join(title.ljust(w) for (_, title, _), w in zip(columns, widths, strict=True)) + " |")
        lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        cells = [
            (fmt.format(row[key]) if row.get(key) is not None else "-").ljust(width)
            for (key, _, fmt), width in zip(columns, widths, strict=True)
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def results_document(model: str, rows: list[dict[str, Any]], context: EvaluationContext) -> dict[str, Any]:
    """The JSON written next to the model: protocol, reference, skipped metrics and result rows."""
    metadata = classifier_metadata() if context.digits else {}
    return {
        "model": model,
        "ddpm_zoo_version": __version__,
        "task_type": TASK_TYPE,
        "reference": {
            "name": context.reference.name,
            "dataset_type": context.reference.dataset_type,
            "dataset_name": context.reference.dataset_name,
            "split": context.reference.split,
            "num_images": len(context.reference.images),
        },
        "digit_classifier": (
            {
                "sha256": metadata["sha256"],
                "test_accuracy": metadata["test_accuracy"],
                "confidence_threshold": CONFIDENCE_THRESHOLD,
            }
            if context.digits
            else None
        ),
        "skipped": dict(context.skipped),
        "results": rows,
    }


def write_results(document: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write the results JSON (atomically; strict JSON, so a non-finite number is a ValueError) and return
    its path."""
    path = Path(path)
    text = json.dumps(document, indent=2, allow_nan=False) + "\n"
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        partial.write_text(text)
        os.replace(partial, path)
    return path


CARD_METRICS = (
    ("conditional_accuracy", "conditional_accuracy", "Conditional accuracy (digit classifier)"),
    ("recognisability", "recognisability", "Recognisability (digit classifier confidence >= 0.9)"),
    ("fd_digits", "fd_digits", "FD in digit-classifier features"),
    ("color_accuracy", "color_accuracy", "Color accuracy"),
    ("fid", "fid", "FID (torchmetrics, Inception)"),
    ("kid", "kid", "KID (torchmetrics, Inception)"),
    ("fd_dinov2", "fd_dinov2", "FD-DINOv2"),
)


def eval_results_for_card(results: dict[str, Any] | list[dict[str, Any]], row: int = 0) -> list:
    """`huggingface_hub.EvalResult`s for a model card's model-index, from one row (default the first) of
    a results document (or a list of rows); the setting is given as each metric's `metric_config`."""
    document = results if isinstance(results, dict) else {"results": list(results)}
    rows = document.get("results") or []
    if not rows:
        return []
    chosen = rows[row]
    reference = document.get("reference") or {"dataset_type": EMBEDDED_MNIST, "dataset_name": EMBEDDED_MNIST}
    setting = describe_setting(chosen)
    return [
        EvalResult(
            task_type=TASK_TYPE,
            dataset_type=reference["dataset_type"],
            dataset_name=reference["dataset_name"],
            dataset_split=reference.get("split"),
            metric_type=metric_type,
            metric_name=metric_name,
            metric_value=round(float(chosen[key]), 4),
            metric_config=setting,
        )
        for key, metric_type, metric_name in CARD_METRICS
        if chosen.get(key) is not None
    ]


def card_row(rows: Sequence[dict[str, Any]], default_guidance: float | None) -> int:
    """The row a model card reports: the first at the pipeline's default guidance (what a plain call
    samples), else the first."""
    return next((i for i, row in enumerate(rows) if row.get("guidance_scale") == default_guidance), 0)


def describe_setting(row: dict[str, Any]) -> str:
    """'dpmsolver, 25 steps, guidance 3, 5000 samples in batches of 250, seed 0' (rows written before the
    batch size was recorded leave it out)."""
    parts = [str(row.get("scheduler")), f"{row.get('num_inference_steps')} steps"]
    if row.get("guidance_scale") is not None:
        parts.append(f"guidance {row['guidance_scale']:g}")
    samples = f"{row.get('num_samples')} samples"
    if row.get("batch_size") is not None:
        samples += f" in batches of {row['batch_size']}"
    parts += [samples, f"seed {row.get('seed')}"]
    return ", ".join(parts)


def update_model_card(folder: Path, document: dict[str, Any], row: int, results_path: Path) -> None:
    """Put row `row` of the results into a trained folder's model card, but only when they went to the
    folder's own eval_results.json and have metrics for the card; a training_summary.json that cannot be
    used is one warning line (the results are written by then)."""
    if results_path.resolve() != (folder / RESULTS_FILE).resolve():
        print(f"model card left alone: it reports {folder / RESULTS_FILE} only, and these results went elsewhere")
        return
    eval_results = eval_results_for_card(document, row)
    if not eval_results:
        print("model card left alone: these results have no metric for it")
        return
    try:
        card = refresh_model_card(folder, eval_results)
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        summary = folder / "training_summary.json"
        print(
            f"warning: model card left alone: {summary} cannot be used ({type(error).__name__}: {error})",
            file=sys.stderr,
        )
        return
    if card is not None:
        print(f"model card updated with these results: {card}")
