"""Where a ShapesWorld connector training step's time goes, and what each lever buys, side by side.

The shipped recipe's step (`configs/shapes/ella-tsc.yaml`: the shipped UNet and MiniLM, batch 32,
from the feature cache), on one thread as the recipe's CPU-minutes are counted. Phases of a step
(data, batch tensors, forward, backward, optimizer), the forward split into the connector and the
frozen UNet, then levers, each timed against the plain step in alternation (median of the
per-pair ratios): channels_last, padding trimmed to the batch's longest caption, batch 64,
bf16 autocast with diffusers' attention and with the attention kept in fp32 (only on a CPU with
native bf16), `torch.compile` of the UNet (its compile time reported apart).

    ella cache configs/shapes/ella-tsc.yaml --model src/ella/assets/shapes \\
        --train_data shapes:2048:dense+brief+relative+varied+varied --cache_dir /tmp/shapes-cache
    python benchmarks/train_step_profile.py --cache /tmp/shapes-cache [--out benchmarks/results/train_step_profile_cpu.json]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))


def step_arguments(parser: argparse.ArgumentParser, cache_required: bool = True) -> None:
    """What every benchmark of the recipe's step takes: its cache, threads, pairs, the output."""
    parser.add_argument("--cache", required=cache_required, help="a feature cache of the recipe (`ella cache`)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--pairs", type=int, default=6, help="alternating plain / lever timings")
    parser.add_argument("--out", default=None)
    parser.add_argument("--load", default="nothing else running", help="what else ran on the machine (recorded)")


def recipe_run(cache: str, output_dir: str, **overrides):
    """The shipped recipe's run (`configs/shapes/ella-tsc.yaml`, from the shipped TSC, on the
    feature cache `cache`), built and resumed: (config, run, batches, encoder, empty prompt)."""
    from ella.train import loop
    from ella.train.config import load_config

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = load_config(os.path.join(repo, "configs/shapes/ella-tsc.yaml"), dict(
        model=os.path.join(repo, "src/ella/assets/shapes"), init_connector=os.path.join(repo, "src/ella/assets/shapes/ella-tsc"),
        cache_dir=cache, train_data="shapes:2048:dense+brief+relative+varied+varied", output_dir=output_dir,
        validate_every=0, **overrides))
    run = loop.build(config, None)
    loop.resume(run)
    batches = loop.open_data(config, run.parts, 0, 1, run.position)
    encoder = run.parts.encoder(config)
    return config, run, batches, encoder, loop._EmptyPrompt(config, encoder)


def main() -> None:
    parser = argparse.ArgumentParser()
    step_arguments(parser)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (minutes of compiling)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from startup import report

    from ella.train import loop

    # The plain path (fp32, diffusers' attention processors): each lever is timed against it.
    config, run, batches, encoder, empty = recipe_run(args.cache, "/tmp/ella-step-profile", mixed_precision="no")

    phases = {k: [] for k in ("data", "batch tensors", "forward", "backward", "optimizer")}
    for step in range(args.pairs + 2):
        t = [time.perf_counter()]
        batch = next(batches)
        t.append(time.perf_counter())
        g = loop.step_generator(0, 0, step, 0)
        latents, text, mask, _ = loop.make_batch_tensors(batch, config, run.parts, encoder, empty, g, "cpu")
        t.append(time.perf_counter())
        loss = loop.diffusion_loss(run.model, run.parts, latents, text, mask, g, True, config)
        t.append(time.perf_counter())
        loss.backward()
        t.append(time.perf_counter())
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
        t.append(time.perf_counter())
        if step >= 2:
            for times, a, b in zip(phases.values(), t, t[1:]):
                times.append(b - a)
    step_s = sum(statistics.median(v) for v in phases.values())
    timesteps = torch.randint(0, 1000, (len(latents),))
    with torch.no_grad():
        features = text.to(run.ella.dtype)  # the cache keeps them in float16
        connector_s = _median(lambda: run.ella(features, timesteps, mask), 5)
        cond = run.ella(features, timesteps, mask)
        unet_s = _median(lambda: run.parts.unet(latents, timesteps, encoder_hidden_states=cond), 5)

    def plain(latents=latents, text=text, mask=mask, autocast=contextlib.nullcontext):
        g = loop.step_generator(0, 0, 0, 0)
        with autocast():
            loss = loop.diffusion_loss(run.model, run.parts, latents, text, mask, g, True, config)
        loss.backward()

    longest = int(mask.sum(1).max())
    levers = {
        "padding trimmed to the batch's longest caption": lambda: plain(text=text[:, :longest], mask=mask[:, :longest]),
        "batch 64 (per sample)": lambda: plain(torch.cat([latents] * 2), torch.cat([text] * 2), torch.cat([mask] * 2)),
    }
    if _native_bf16():
        from ella.train.attention import attention_in_float32

        unet = run.parts.unet
        processors = {"diffusers'": dict(unet.attn_processors)}
        attention_in_float32(unet)
        processors["fp32"] = dict(unet.attn_processors)

        def bf16(attention: str):  # set_attn_processor consumes the dict it is given: a copy each time
            unet.set_attn_processor(dict(processors[attention]))
            plain(autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16))
            unet.set_attn_processor(dict(processors["diffusers'"]))

        levers["bf16 autocast"] = lambda: bf16("diffusers'")
        levers["bf16 autocast, attention in fp32 (the fast path)"] = lambda: bf16("fp32")
    ratios = {name: _ratio(plain, lever, args.pairs, 2.0 if "64" in name else 1.0) for name, lever in levers.items()}
    run.parts.unet.to(memory_format=torch.channels_last)
    ratios["channels_last"] = _ratio(plain, lambda: plain(latents.contiguous(memory_format=torch.channels_last)),
                                     args.pairs)
    run.parts.unet.to(memory_format=torch.contiguous_format)
    compiled = {}
    if args.compile:
        start = time.perf_counter()
        run.parts.unet.compile()
        plain()
        compiled["compile seconds"] = time.perf_counter() - start
        compiled["speed-up after compiling"] = 1 / (_median(plain, args.pairs) / step_s)
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {args.threads} torch thread(s); {args.load}",
        "command": "python " + " ".join(["benchmarks/train_step_profile.py", *sys.argv[1:]]),
        "step (batch 32)": {"seconds": step_s, "samples per second": len(latents) / step_s,
                            **{f"{k} share": statistics.median(v) / step_s for k, v in phases.items()}},
        "forward split (no grad), seconds": {"connector": connector_s, "frozen UNet": unet_s},
        "levers: speed-up against the plain step (median of alternating pairs; > 1 is faster)": ratios,
        **({"torch.compile of the UNet": compiled} if compiled else {}),
        "text tokens": {"padded to": int(mask.shape[1]), "longest in the batch": longest,
                        "real share": float(mask.float().mean())},
    }
    report(result, args.out)


def _median(fn, n: int) -> float:
    times = []
    for _ in range(n + 1):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def _ratio(plain, lever, pairs: int, work: float = 1.0) -> float:
    """How much faster `lever` does the same work (`work`: its share of plain's), plain and lever in turn."""
    lever()
    ratios = []
    for _ in range(pairs):
        a, b = _median(plain, 1), _median(lever, 1)
        ratios.append(a * work / b)
    return statistics.median(ratios)


def _native_bf16() -> bool:
    flags = open("/proc/cpuinfo").read() if os.path.isfile("/proc/cpuinfo") else ""
    return any(f in flags for f in ("avx512_bf16", "amx_bf16"))


if __name__ == "__main__":
    main()
