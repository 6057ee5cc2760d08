"""What the decoded-image cache costs and saves ``imgcls predict``, by number of images.

    python benchmarks/predict_cache.py [--counts 1,8,32,64,128,1000] [--size 32] [--image 96] [--repeat 5]

Makes ``max(counts)`` small JPEGs (``--image`` px square) and a randomly initialised
``cnn`` model (``--size`` px input) in a temporary folder, then, in this process (the
model loaded once, so start-up cost is left out), times
:func:`imgcls.evaluation.inference.predict_batches` over the first N images:

* ``stream_s``: no cache (decode in threads, predict), what predict did before;
* ``miss_store_s``: an empty cache: key + lookup, decode, predict, write the entry;
* ``hit_s``: the entry exists: key + lookup + CRC check, predict from the memory map;
* ``key_s``: computing the key alone (one stat per file);
* ``decode_s``: decoding alone (no model), the work a hit saves;
* ``store_s``: writing the entry alone (append, fsync, rename, sidecar), the work a miss adds;
* ``lookup_hit_s``: key + reading and CRC-checking an existing entry.

Best of ``--repeat`` runs each. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


def best_of(repeat: int, func, before=None) -> float:
    times = []
    for _ in range(repeat):
        if before is not None:
            before()
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="1,8,32,64,128,1000")
    parser.add_argument("--size", type=int, default=32, help="model input size (px)")
    parser.add_argument("--image", type=int, default=96, help="side of the generated JPEGs (px)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]

    import numpy as np
    import torch
    from PIL import Image

    from imgcls.cache import EntryWriter, decoded_key, load_entry
    from imgcls.evaluation.inference import default_workers, iter_decoded, predict_batches
    from imgcls.models import get_model
    from imgcls.models.io import ModelInfo, load_model, save_model

    results = []
    with tempfile.TemporaryDirectory(prefix="imgcls-predictcache-") as tmp:
        tmp = Path(tmp)
        rng = np.random.default_rng(0)
        paths = []
        for i in range(max(counts)):
            path = tmp / "img" / f"{i:05d}.jpg"
            path.parent.mkdir(exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (args.image, args.image, 3), dtype=np.uint8), "RGB").save(path, quality=90)
            paths.append(str(path))
        torch.manual_seed(0)
        classes = [f"c{i}" for i in range(10)]
        save_model(tmp / "model.safetensors", get_model("cnn", num_classes=10, in_channels=3), ModelInfo(
            arch="cnn", classes=classes, image_size=args.size, channels=3, mean=[0.5] * 3, std=[0.25] * 3))
        model, info = load_model(tmp / "model.safetensors", "cpu")
        cache = tmp / "cache"

        def run(subset, cache_dir):
            for _ in predict_batches(model, info, subset, batch_size=32, cache_dir=cache_dir):
                pass

        def clear():
            shutil.rmtree(cache, ignore_errors=True)

        for n in counts:
            subset = paths[:n]
            run(subset, None)  # warm the page cache and the model
            stream = best_of(args.repeat, lambda: run(subset, None))
            miss = best_of(args.repeat, lambda: run(subset, cache), before=clear)
            hit = best_of(args.repeat, lambda: run(subset, cache))  # the last miss left the entry
            key = best_of(args.repeat, lambda: decoded_key(subset, info.image_size, info.channels))
            decoded = []
            decode = best_of(args.repeat, lambda: decoded.append(
                [a for _, a, _ in iter_decoded(subset, info.image_size, info.channels, 32, default_workers())]))
            batches = decoded[-1]
            shape = (n, info.image_size, info.image_size, info.channels)

            def store():
                writer = EntryWriter(tmp / "store", "decoded", "k", shape)
                for array in batches:
                    writer.append(array)
                writer.commit()

            store_s = best_of(args.repeat, store)
            lookup = best_of(args.repeat, lambda: load_entry(
                cache / "decoded", decoded_key(subset, info.image_size, info.channels)))
            entry = next((cache / "decoded").glob("*.npy"))
            results.append({"images": n, "stream_s": round(stream, 5), "miss_store_s": round(miss, 5),
                            "hit_s": round(hit, 5), "key_s": round(key, 5), "decode_s": round(decode, 5),
                            "store_s": round(store_s, 5), "lookup_hit_s": round(lookup, 5),
                            "miss_overhead_s": round(miss - stream, 5), "hit_saving_s": round(stream - hit, 5),
                            "entry_bytes": entry.stat().st_size})
    print(json.dumps({
        "benchmark": "predict_cache", "model": "cnn", "model_size": args.size, "image_px": args.image,
        "repeats": args.repeat, "cpu_count": os.cpu_count(), "decode_threads": default_workers(),
        "torch_threads": torch.get_num_threads(), "python": sys.version.split()[0], "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()
