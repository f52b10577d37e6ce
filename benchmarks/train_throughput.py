"""Training throughput from raw data vs from the feature cache, side by side in one run.

The raw path encodes every caption with the LLM and every image with the VAE at each step; the
cached path reads both from `ella cache` shards, so a step runs only the connector and the UNet.
A real LLM (all-MiniLM-L6-v2, 22M parameters; FLAN-T5-XL is 50x larger) with tiny random
SD-style parts (latent UNet + VAE) on synthetic data, CPU:

    python benchmarks/train_throughput.py [--steps 30]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile

import torch

from ella.train import load_config, train
from ella.train.cache import build_cache
from ella.train.components import load_frozen_parts

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "tiny.yaml")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        common = dict(max_steps=args.steps, batch_size=args.batch_size, validate_every=0, log_every=1000,
                      checkpoint_every=10**6, train_data="synthetic:256", resolution=32, text_max_length=64,
                      llm="minilm")
        raw = train(load_config(CONFIG, {**common, "output_dir": f"{tmp}/raw"}))
        config = load_config(CONFIG, {**common, "output_dir": f"{tmp}/cached", "cache_dir": f"{tmp}/cache"})
        build_cache(config, load_frozen_parts(config, torch.device("cpu"), torch.float32, need_unet=False))
        cached = train(config)
    print(f"raw data:      {raw.samples_per_second:8.1f} samples/s")
    print(f"feature cache: {cached.samples_per_second:8.1f} samples/s")
    print(f"cache speed-up: {cached.samples_per_second / raw.samples_per_second:.2f}x")


if __name__ == "__main__":
    main()
