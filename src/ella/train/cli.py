"""`ella train` and `ella cache`."""

from __future__ import annotations


def run_train_command(args) -> None:
    from .config import load_config, parse_overrides

    config = load_config(args.config, parse_overrides(args.overrides))
    if args.command == "cache":
        import torch

        from ..devices import resolve_device
        from .cache import build_cache, require_cache_dir
        from .components import load_frozen_parts

        require_cache_dir(config)  # before loading any model

        device = resolve_device("auto")
        index = build_cache(config, load_frozen_parts(config, device, torch.float32, need_unet=False))
        print(f"cached {sum(s['count'] for s in index['shards'])} samples to {config.cache_dir} "
              f"({index['skipped']} skipped)")
        return
    from .loop import train

    result = train(config)
    if result.export_dir:
        print(f"trained {result.step} steps; final loss {result.losses[-1][1]:.4f}; "
              f"{result.samples_per_second:.1f} samples/s; exported to {result.export_dir}")
