"""How much does ELLA add to a denoising step, and what does masked batching buy?

Side by side in one run, on this machine:
1. one CFG denoising step (batch 2) of an SD1.5-sized UNet (random weights, default
   `UNet2DConditionModel()` config, 64x64 latents) alone, vs the `sd15-t5xl` connector + UNet;
2. the connector on 8 prompts of different lengths: one masked, padded batch vs the
   reference-style loop (one unpadded prompt at a time);
3. the connector for a whole 25-step schedule in one call (the pipeline's
   `precompute_connector=True`), per step, vs one call per step;
4. the ceiling for 2: the arithmetic rate (FLOP/s) of the loop and of the batch against one large
   matmul's on the same device. Batching cannot do less arithmetic than the loop (padding adds
   some), so no batching can beat the loop by more than large-matmul rate / loop rate.

    python benchmarks/connector_overhead.py [--repeats 5] [--device cuda] [--dtype float16]
"""

from __future__ import annotations

import argparse
import time

import torch
from diffusers import UNet2DConditionModel
from torch.utils.flop_counter import FlopCounterMode

from ella import ELLA
from ella.text_encoders import TextFeatures, pad_features


def best_time(fn, repeats: int, device: torch.device) -> float:
    def synchronize() -> None:  # GPU kernels run asynchronously: time until they have finished
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()  # warm-up
    times = []
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), {args.dtype}")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(cross_attention_dim=768).to(device, dtype).eval()  # default config, SD1.5 text width
    ella = ELLA.from_preset("sd15-t5xl").to(device, dtype).eval()
    latents = torch.randn(2, 4, 64, 64, device=device, dtype=dtype)
    text = torch.randn(2, 128, 2048, device=device, dtype=dtype)  # fixed-length T5 features, [negative; positive]
    t = torch.tensor(500, device=device)
    cond = ella(text, t)

    def timed(fn) -> float:
        return best_time(fn, args.repeats, device)

    unet_only = timed(lambda: unet(latents, t, encoder_hidden_states=cond))
    with_ella = timed(lambda: unet(latents, t, encoder_hidden_states=ella(text, t)))
    connector = timed(lambda: ella(text, t))
    print(f"UNet CFG step (batch 2):            {unet_only * 1e3:9.1f} ms")
    print(f"connector + UNet CFG step:          {with_ella * 1e3:9.1f} ms")
    print(f"connector alone (batch 2, 128 tok): {connector * 1e3:9.1f} ms")
    print(f"connector overhead: {100 * connector / unet_only:.2f}% of a UNet step "
          f"(end to end: {100 * (with_ella / unet_only - 1):+.2f}%)")

    steps = 25
    schedule = torch.linspace(999, 0, steps, device=device).round()
    all_steps = timed(lambda: ella.forward_timesteps(text, schedule)) / steps
    print(f"connector precomputed for {steps} steps (batch {text.shape[0] * steps}), per step: {all_steps * 1e3:9.1f} ms")
    print(f"precomputed overhead: {100 * all_steps / unet_only:.2f}% of a UNet step "
          f"(speed-up over one call per step: {connector / all_steps:.2f}x)")

    lengths = [7, 12, 19, 25, 33, 48, 64, 96]
    prompts = [torch.randn(1, n, 2048, device=device, dtype=dtype) for n in lengths]
    padded = pad_features([TextFeatures(p, torch.ones(p.shape[:2], dtype=torch.long, device=device)) for p in prompts])
    batch, mask = padded.hidden_states, padded.attention_mask
    loop = timed(lambda: [ella(p, t) for p in prompts])
    batched = timed(lambda: ella(batch, t, mask))
    print(f"8 prompts, per-prompt loop:         {loop * 1e3:9.1f} ms")
    print(f"8 prompts, one masked batch:        {batched * 1e3:9.1f} ms")
    print(f"batched speed-up: {loop / batched:.2f}x")

    def flops(fn) -> int:
        with FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops()

    big = torch.randn(4096, 4096, device=device, dtype=dtype)
    peak = 2 * 4096**3 / timed(lambda: big @ big)
    loop_rate = flops(lambda: [ella(p, t) for p in prompts]) / loop
    batch_rate = flops(lambda: ella(batch, t, mask)) / batched
    print(f"arithmetic: loop {loop_rate / 1e9:.0f} GFLOP/s, batch {batch_rate / 1e9:.0f} GFLOP/s, "
          f"a 4096x4096 matmul {peak / 1e9:.0f} GFLOP/s")
    print(f"ceiling for any batching here: {peak / loop_rate:.2f}x the loop")


if __name__ == "__main__":
    main()
