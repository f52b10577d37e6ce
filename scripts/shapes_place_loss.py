"""Does a conditioning carry place? The frozen base UNet's denoising loss on 96 one-object scenes
(gray background), with the place named in the prompt and left out, per noise band.

    python scripts/shapes_place_loss.py [MODEL_DIR]

Rows: the base's own 16-token encoder on "a large red circle at the top left on gray", and each
connector on the one-object dense prompt of scripts/shapes_follow.py. Where the place is conveyed,
leaving it out raises the loss at high noise (t >= 700), where the layout is decided; where it is
not, the two columns agree. Same scenes, noise and timesteps in every row (v-prediction MSE).
For each resampler connector it also prints the relative spread of its output tokens (mean
distance from their mean / mean norm) at t = 100, 500, 900: near 0, the UNet's cross-attention
sees one token repeated and has nothing to route to different cells.
"""

from __future__ import annotations

import argparse
import os
import random

import torch
from diffusers import DDPMScheduler
from shapes_follow import prompt

from ella.models import ELLA
from ella.shapes.catalog import CONNECTORS, shipped_model_dir
from ella.shapes.data import to_tensor
from ella.shapes.models import load_shapes_pipeline
from ella.shapes.world import COLORS, SHAPES, SIZES, Obj, Scene, render
from ella.text_encoders import MINILM

BANDS = ((0, 300), (300, 700), (700, 1000))
SPREAD_TIMESTEPS = (100, 500, 900)


def token_spread(tokens: torch.Tensor) -> float:
    """tokens: (B, N, O) -> mean distance of the N tokens from their mean / mean token norm."""
    return ((tokens - tokens.mean(1, keepdim=True)).norm(dim=-1).mean() / tokens.norm(dim=-1).mean()).item()


@torch.no_grad()
def main(model_dir: str | None = None, n: int = 96) -> None:
    model_dir = model_dir or shipped_model_dir()
    rng = random.Random(7)
    objects = [(rng.choice(list(SIZES)), rng.choice(list(COLORS)), rng.choice(SHAPES), rng.randrange(9)) for _ in range(n)]
    x0 = torch.stack([to_tensor(render(Scene((Obj(shape, color, size, cell),), "gray"))) for size, color, shape, cell in objects])
    pipe = load_shapes_pipeline(model_dir, connector=None)  # each connector is set below
    schedule = DDPMScheduler.from_config(pipe.scheduler.config)
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(x0.shape, generator=g)
    bands = []  # (t, noisy input, v target) per band, shared by every row
    for lo, hi in BANDS:
        t = torch.randint(lo, hi, (n,), generator=g)
        bands.append((t, schedule.add_noise(x0, noise, t), schedule.get_velocity(x0, noise, t)))

    def losses(condition) -> str:  # condition: t (n,) -> encoder_hidden_states
        out = []
        for t, noisy, target in bands:
            pred = pipe.unet(noisy, t, encoder_hidden_states=condition(t)).sample
            out.append(torch.nn.functional.mse_loss(pred.float(), target).item())
        return " | ".join(f"{v:.4f}" for v in out)

    def prompts(dense: bool, place: bool) -> list[str]:
        suffix = "" if dense else " on gray"
        return [prompt(size, color, shape, cell if place else None, dense) + suffix for size, color, shape, cell in objects]

    print(f"{'conditioning':32s} loss at t in " + " | ".join(f"[{lo}, {hi})" for lo, hi in BANDS))
    for place in (True, False):
        clip = pipe.encode_clip(prompts(False, place))
        print(f"{'base encoder, ' + ('place named' if place else 'no place'):32s} {losses(lambda t, clip=clip: clip)}")
    for variant in [c for c, reads in CONNECTORS.items() if reads.llm == MINILM]:  # they share pipe's LLM
        if not os.path.isdir(os.path.join(model_dir, f"ella-{variant}")):
            continue
        pipe.ella = ELLA.from_pretrained(os.path.join(model_dir, f"ella-{variant}"), torch_dtype=pipe.unet.dtype)
        for place in (True, False):
            features = pipe.encode_llm(prompts(True, place))
            row = f"ELLA {variant}, " + ("place named" if place else "no place")
            print(f"{row:32s} {losses(lambda t, f=features: pipe.ella(f.hidden_states, t, f.attention_mask))}")
            if place and not pipe.ella.keeps_text_length:  # the MLP keeps one token per text token
                spread = [token_spread(pipe.ella(features.hidden_states, t, features.attention_mask)) for t in SPREAD_TIMESTEPS]
                print(f"{'  token spread, t=' + '/'.join(map(str, SPREAD_TIMESTEPS)):32s} " + " | ".join(f"{v:.2f}" for v in spread))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", nargs="?", default=None)
    main(parser.parse_args().model_dir)
