"""Evaluation: how good is a model, measured offline under one published protocol (docs/evaluation.md).

Digit models (mnist-tiny, colored-mnist) are scored with a small digit classifier that ships with the
package (`classifier`):

- recognisability: share of samples the classifier labels with confidence >= 0.9;
- conditional accuracy: share of class-conditional samples classified as the requested digit;
- FD (digit features): Frechet distance (Heusel et al., 2017) between classifier features of generated
  and real digits, with the real statistics cached (`references`);
- color accuracy (RGB digits): the color read from the foreground pixels is the requested one or, for
  models that do not take a color, a clean palette color (`metrics`).

FID/KID (torchmetrics with torch-fidelity's Inception weights) and FD-DINOv2 (Stein et al., 2023) run
when their packages and weights are present locally, and are skipped with a one-line message otherwise
(`fidelity`). `protocol` samples and scores one setting or a sweep; `report` writes the table, the JSON
and the model card's entries.
"""

from ddpm_zoo.evaluation.classifier import (
    DigitClassifier,
    classifier_metadata,
    classifier_path,
    classifier_split,
    classify,
    file_sha256,
    load_digit_classifier,
    save_digit_classifier,
)
from ddpm_zoo.evaluation.metrics import (
    CONFIDENCE_THRESHOLD,
    color_accuracy,
    color_counts,
    conditional_accuracy,
    feature_statistics,
    frechet_distance,
    frechet_distance_features,
    recognisability,
)
from ddpm_zoo.evaluation.protocol import (
    PROTOCOL_BATCH_SIZE,
    PROTOCOL_SAMPLES,
    PROTOCOL_SCHEDULER,
    PROTOCOL_STEPS,
    evaluate_pipeline,
    protocol_steps,
    sweep,
)
from ddpm_zoo.evaluation.references import (
    EvaluationContext,
    Reference,
    cache_dir,
    dataset_reference,
    digit_reference,
    is_digit_model,
    make_context,
    reference_digit_statistics,
)
from ddpm_zoo.evaluation.report import (
    RESULTS_FILE,
    card_row,
    describe_setting,
    eval_results_for_card,
    format_table,
    results_document,
    update_model_card,
    write_results,
)

__all__ = [
    "CONFIDENCE_THRESHOLD",
    "PROTOCOL_BATCH_SIZE",
    "PROTOCOL_SAMPLES",
    "PROTOCOL_SCHEDULER",
    "PROTOCOL_STEPS",
    "RESULTS_FILE",
    "DigitClassifier",
    "EvaluationContext",
    "Reference",
    "cache_dir",
    "card_row",
    "classifier_metadata",
    "classifier_path",
    "classifier_split",
    "classify",
    "color_accuracy",
    "color_counts",
    "conditional_accuracy",
    "dataset_reference",
    "describe_setting",
    "digit_reference",
    "eval_results_for_card",
    "evaluate_pipeline",
    "feature_statistics",
    "file_sha256",
    "format_table",
    "frechet_distance",
    "frechet_distance_features",
    "is_digit_model",
    "load_digit_classifier",
    "make_context",
    "protocol_steps",
    "recognisability",
    "reference_digit_statistics",
    "results_document",
    "save_digit_classifier",
    "sweep",
    "update_model_card",
    "write_results",
]
