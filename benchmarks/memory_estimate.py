"""train's up-front memory estimate (imgcls/training/budget.py) for common configurations.

    python benchmarks/memory_estimate.py [--batch-size 64] [--classes 10]

Builds each model on the meta device (no memory is allocated) and prints one JSON object
per configuration: parameters, weights+optimizer bytes, activation bytes of one batch and
the total train would compare against the machine's memory. Compare the total with the
peak resident memory of a real run (``/usr/bin/time -v imgcls -v train ...``; ``-v``
prints the estimate) to see how far the figure is from reality.
"""

from __future__ import annotations

import argparse
import json

CONFIGS = [("cnn", {}, 32), ("cnn-classic", {}, 28), ("mobilenet_v2", {}, 224), ("densenet121", {}, 224),
           ("vgg16", {}, 224), ("cnn", {"width": 100000}, 32), ("cnn", {}, 100000)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--classes", type=int, default=10)
    args = parser.parse_args()

    import imgcls.models  # noqa: F401  (registers the architectures)
    from imgcls.memory import format_bytes
    from imgcls.training.budget import estimate_training_bytes
    from imgcls.training.config import TrainConfig

    for arch, options, size in CONFIGS:
        cfg = TrainConfig(arch=arch, arch_options=options, image_size=size, channels=3, batch_size=args.batch_size)
        parts = estimate_training_bytes(cfg, args.classes, 1000, 4 << 30)
        total = parts["weights"] + parts["activations"] + parts["batch"] + parts["images"]
        print(json.dumps({"arch": arch, "options": options, "image_size": size, **parts, "total": total,
                          "total_text": format_bytes(total)}))


if __name__ == "__main__":
    main()
