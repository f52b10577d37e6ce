"""How much does ELLA add to a denoising step, and what does masked batching buy?

Side by side in one run, on this machine:
1. one CFG denoising step (batch 2) of an SD1.5-sized UNet (random weights, default
   `UNet2DConditionModel()` config, 64x64 latents) alone, vs the `sd15-t5xl` connector + UNet;
2. the connector on 8 prompts of different lengths: one masked, padded batch vs the
   reference-style loop (one unpadded prompt at a time).

    python benchmarks/connector_overhead.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import torch
from diffusers import UNet2DConditionModel

from ella import ELLA


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(cross_attention_dim=768).eval()  # default config, SD1.5 text width
    ella = ELLA.from_preset("sd15-t5xl").eval()
    latents = torch.randn(2, 4, 64, 64)
    text = torch.randn(2, 128, 2048)  # fixed-length T5 features, [negative; positive]
    t = torch.tensor(500)
    cond = ella(text, t)

    unet_only = best_time(lambda: unet(latents, t, encoder_hidden_states=cond), args.repeats)
    with_ella = best_time(lambda: unet(latents, t, encoder_hidden_states=ella(text, t)), args.repeats)
    connector = best_time(lambda: ella(text, t), args.repeats)
    print(f"UNet CFG step (batch 2):            {unet_only * 1e3:9.1f} ms")
    print(f"connector + UNet CFG step:          {with_ella * 1e3:9.1f} ms")
    print(f"connector alone (batch 2, 128 tok): {connector * 1e3:9.1f} ms")
    print(f"connector overhead: {100 * connector / unet_only:.2f}% of a UNet step "
          f"(end to end: {100 * (with_ella / unet_only - 1):+.2f}%)")

    lengths = [7, 12, 19, 25, 33, 48, 64, 96]
    prompts = [torch.randn(1, n, 2048) for n in lengths]
    batch = torch.zeros(len(lengths), max(lengths), 2048)
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for i, p in enumerate(prompts):
        batch[i, : p.shape[1]], mask[i, : p.shape[1]] = p[0], 1
    loop = best_time(lambda: [ella(p, t) for p in prompts], args.repeats)
    batched = best_time(lambda: ella(batch, t, mask), args.repeats)
    print(f"8 prompts, per-prompt loop:         {loop * 1e3:9.1f} ms")
    print(f"8 prompts, one masked batch:        {batched * 1e3:9.1f} ms")
    print(f"batched speed-up: {loop / batched:.2f}x")


if __name__ == "__main__":
    main()
