"""The loss curve drawn from a run's loss.csv with PIL."""

import io

from PIL import Image

from ddpm_zoo.checkpoints import LOSS_COLUMNS
from ddpm_zoo.visualize import loss_curve_png, moving_average, read_loss_log


def write_log(path, rows: list[str]) -> None:
    path.write_text(",".join(LOSS_COLUMNS) + "\n" + "".join(f"{row}\n" for row in rows))


def test_the_log_keeps_finite_positive_losses_up_to_the_step_asked(tmp_path):
    log = tmp_path / "loss.csv"
    write_log(log, ["1,0.5,0.001,0,0.1", "2,nan,0.001,0.1,0.2", "3,0.25,0.001,0.2,0.3", "4,0.2", "5,0.1,0,0.3,0.5"])
    assert read_loss_log(log) == ([1, 3, 4, 5], [0.5, 0.25, 0.2, 0.1])
    assert read_loss_log(log, last_step=3) == ([1, 3], [0.5, 0.25])
    assert read_loss_log(tmp_path / "missing.csv") == ([], [])


def test_the_curve_is_a_png_where_two_steps_were_logged(tmp_path):
    log = tmp_path / "loss.csv"
    write_log(log, ["1,0.5,0.001,0,0.1"])
    assert loss_curve_png(log) is None
    write_log(log, [f"{step},{1 / step},0.001,0,{step}" for step in range(1, 201)])
    with Image.open(io.BytesIO(loss_curve_png(log))) as curve:
        assert curve.format == "PNG" and curve.size == (640, 360)
        assert len(curve.getcolors(maxcolors=100_000)) > 2  # more than a blank canvas


def test_the_smoothed_line_is_a_centred_mean():
    assert moving_average([1, 2, 3, 4, 5], 3) == [1.5, 2.0, 3.0, 4.0, 4.5]
    assert moving_average([4.0, 2.0], 1) == [4.0, 2.0]
