"""img2img, inpainting and prompt weighting with the shipped ShapesWorld model, judged exactly.

- img2img: held-out scenes rendered as ground truth, redrawn from the image at `--strength` with
  their own dense prompt; the share of the scene's questions still answered yes (the ground truth
  answers every one yes), beside text-to-image from the same prompts (strength 1.0).
- inpainting: held-out scenes with one empty grid cell masked and a new object asked for there
  ("a large red circle at the top left"); the judge's reading of that cell (object, shape, colour,
  size) and the largest change of any pixel outside the mask.
- prompt weighting (`--what weighting`): held-out dense prompts with every shape word weighted
  (`(circle:1.3)`), the attribute the default model misses most; the judge's shape accuracy and
  its whole score without weighting and with each weighting mode.

    python scripts/shapes_image_edits.py --out docs/results/shapesworld-image-edits.json
    python scripts/shapes_image_edits.py --what weighting --out docs/results/shapesworld-prompt-weighting.json
    python scripts/shapes_image_edits.py --what weighting-effect --prompts 16 \
        --out docs/results/shapesworld-prompt-weighting-effect.json
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time

import numpy as np
import torch
from PIL import Image

from ella.shapes.data import HELDOUT_SEED, ShapesSceneDataset
from ella.shapes.judge import ShapesJudge, analyse
from ella.shapes.models import load_shapes_pipeline
from ella.shapes.world import COLORS, RESOLUTION, SHAPES, SIZES, place_phrase, render


def batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield i, items[i: i + size]


def draw(pipe, prompts, seed0: int, steps: int, guidance: float, **kw) -> list[Image.Image]:
    generators = [torch.Generator().manual_seed(seed0 + i) for i in range(len(prompts))]
    return pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, generator=generators, **kw).images


def img2img(pipe, n: int, strength: float, steps: int, guidance: float, batch: int) -> dict:
    judge, data = ShapesJudge(), ShapesSceneDataset(n, seed=HELDOUT_SEED, captions="dense")
    items = [data.item(i) for i in range(n)]
    kept = {"ground truth": [], f"img2img {strength}": [], "text-to-image": []}
    for start, chunk in batches(items, batch):
        prompts = [text for _, text, _ in chunk]
        truths = [render(scene) for scene, _, _ in chunk]
        edited = draw(pipe, prompts, start, steps, guidance, init_image=truths, strength=strength)
        fresh = draw(pipe, prompts, start, steps, guidance)
        for (_, _, rows), truth, a, b in zip(chunk, truths, edited, fresh):
            questions = [r["question_natural_language"] for r in rows]
            for name, image in (("ground truth", truth), (f"img2img {strength}", a), ("text-to-image", b)):
                kept[name].append(np.mean([ans == "yes" for ans in judge.answer(image, questions)]))
    return {name: round(100 * float(np.mean(v)), 2) for name, v in kept.items()}


def inpaint_cases(n: int, seed: int = 7) -> list[tuple]:
    """(ground truth, mask, prompt, cell, (shape, colour, size)) for n held-out scenes with an empty cell."""
    rng, data = random.Random(seed), ShapesSceneDataset(4 * n, seed=HELDOUT_SEED, captions="brief")
    cases = []
    for i in range(4 * n):
        scene = data.item(i)[0]
        empty = sorted(set(range(9)) - {o.cell for o in scene.objects})
        if not empty or len(cases) == n:
            continue
        cell = rng.choice(empty)
        target = (rng.choice(SHAPES), rng.choice(list(COLORS)), rng.choice(list(SIZES)))
        mask = np.zeros((RESOLUTION, RESOLUTION), dtype=np.uint8)
        r, c = divmod(cell, 3)
        mask[round(r * RESOLUTION / 3): round((r + 1) * RESOLUTION / 3),
             round(c * RESOLUTION / 3): round((c + 1) * RESOLUTION / 3)] = 255
        prompt = f"a {target[2]} {target[1]} {target[0]} {place_phrase(cell)}"
        cases.append((render(scene), Image.fromarray(mask), prompt, cell, target))
    return cases


def inpaint(pipe, n: int, steps: int, guidance: float, batch: int) -> dict:
    cases = inpaint_cases(n)
    hits = {"object": [], "shape": [], "color": [], "size": [], "all three": []}
    outside = []
    for start, chunk in batches(cases, batch):
        out = draw(pipe, [c[2] for c in chunk], start, steps, guidance, init_image=[c[0] for c in chunk],
                   mask_image=[c[1] for c in chunk])
        for (truth, mask, _, cell, (shape, color, size)), image in zip(chunk, out):
            seen = analyse(image)[1][cell]
            hits["object"].append(seen is not None)
            ok = {k: seen is not None and getattr(seen, k) == v for k, v in
                  (("shape", shape), ("color", color), ("size", size))}
            for k, v in ok.items():
                hits[k].append(v)
            hits["all three"].append(all(ok.values()))
            keep = np.asarray(mask) == 0
            diff = np.abs(np.asarray(image, dtype=np.int16) - np.asarray(truth, dtype=np.int16))
            outside.append(int(diff[keep].max()))
    return {"cases": len(cases), **{k: round(100 * float(np.mean(v)), 2) for k, v in hits.items()},
            "max pixel change outside the mask (0-255)": max(outside)}


def weight_shapes(prompt: str, weight: float) -> str:
    """Every shape word (circle, squares, ...) wrapped as (word:weight)."""
    words = "|".join(SHAPES)
    return re.sub(rf"\b((?:{words})s?)\b", lambda m: f"({m.group(1)}:{weight})", prompt)


def weighting(pipe, n: int, weight: float, steps: int, guidance: float, batch: int) -> dict:
    judge, data = ShapesJudge(), ShapesSceneDataset(n, seed=HELDOUT_SEED, captions="dense")
    items = [data.item(i) for i in range(n)]
    runs = {"no weighting": None, "attention": "attention", "anchor": "anchor", "scale": "scale"}
    result = {}
    for name, mode in runs.items():
        by_category: dict[str, list[bool]] = {}
        for start, chunk in batches(items, batch):
            prompts = [text if mode is None else weight_shapes(text, weight) for _, text, _ in chunk]
            for (_, _, rows), image in zip(chunk, draw(pipe, prompts, start, steps, guidance, prompt_weighting=mode)):
                answers = judge.answer(image, [r["question_natural_language"] for r in rows])
                for r, a in zip(rows, answers):
                    by_category.setdefault(r["category_detailed"], []).append(a == "yes")
        result[name] = {k: round(100 * float(np.mean(v)), 2) for k, v in sorted(by_category.items())}
        result[name]["all questions"] = round(100 * float(np.mean(sum(by_category.values(), []))), 2)
    return {"prompts": n, "weight on shape words": weight, "example": weight_shapes(items[0][1], weight),
            "questions answered yes (%), by category": result}


def weighting_effect(pipe, n: int, steps: int, guidance: float, batch: int) -> dict:
    """How far each mode moves the connector's output and the image from the unweighted prompt, by
    weight: the why behind the default mode (the connector layer-normalises each text token)."""
    data = ShapesSceneDataset(n, seed=HELDOUT_SEED, captions="dense")
    texts = [data.item(i)[1] for i in range(n)]
    plain = np.stack([np.asarray(im, dtype=np.float32) for im in draw(pipe, texts, 0, steps, guidance)])
    t = torch.tensor([500])
    base = pipe.encode_prompt(texts, do_classifier_free_guidance=False)
    base_out = pipe.ella(base[0], t, base[1])
    result = {}
    for mode in ("attention", "anchor", "scale"):
        for weight in (1.3, 2.0, 4.0):
            weighted = [weight_shapes(x, weight) for x in texts]
            enc = pipe.encode_prompt(weighted, do_classifier_free_guidance=False, prompt_weighting=mode)
            out = pipe.ella(enc[0], t, enc[1])
            images = np.stack([np.asarray(im, dtype=np.float32) for im in
                               draw(pipe, weighted, 0, steps, guidance, prompt_weighting=mode)])
            result[f"{mode} {weight}"] = {
                "connector output mean abs change (t=500)": round((out - base_out).abs().mean().item(), 5),
                "image mean abs change (0-255)": round(float(np.abs(images - plain).mean()), 3),
                "images changed by > 8 levels somewhere": int((np.abs(images - plain).max(axis=(1, 2, 3)) > 8).sum())}
    return {"prompts": n, "connector output mean abs value": round(base_out.abs().mean().item(), 4),
            "effect of weighting the shape words, by mode and weight": result}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--what", choices=("edits", "weighting", "weighting-effect"), default="edits")
    p.add_argument("--connector", default="tsc")
    p.add_argument("--prompts", type=int, default=200, help="weighting: held-out dense prompts")
    p.add_argument("--weight", type=float, default=1.3, help="weighting: the shape words' weight")
    p.add_argument("--scenes", type=int, default=64, help="img2img scenes")
    p.add_argument("--inpaint", type=int, default=32, help="inpainting prompts")
    p.add_argument("--strength", type=float, default=0.3)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    pipe = load_shapes_pipeline(connector=args.connector)
    pipe.set_progress_bar_config(disable=True)
    t0 = time.time()
    result = {"connector": args.connector, "steps": args.steps, "guidance": args.guidance}
    if args.what == "edits":
        result["img2img: share of the scene's questions answered yes (%)"] = img2img(
            pipe, args.scenes, args.strength, args.steps, args.guidance, args.batch)
        result["img2img scenes"] = args.scenes
        result["inpainting one empty cell: the judge in that cell (%)"] = inpaint(
            pipe, args.inpaint, args.steps, args.guidance, args.batch)
    elif args.what == "weighting":
        result.update(weighting(pipe, args.prompts, args.weight, args.steps, args.guidance, args.batch))
    else:
        result.update(weighting_effect(pipe, args.prompts, args.steps, args.guidance, args.batch))
    result.update({
        "machine": "2-core CPU (the development machine), torch " + torch.__version__,
        "command": f"python scripts/shapes_image_edits.py --what {args.what} --out {args.out}",
        "seconds": round(time.time() - t0, 1),
    })
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
