"""`ella bench shapes`: the paper's DPG-Bench comparison in miniature.

Held-out dense prompts (a seed stream disjoint from training; or the same scenes as brief
prompts) with their questions in the official CSV format; 4 images per prompt from each model;
the exact `shapes` judge through the DPG-Bench scorer (corrected mode); a ground-truth row (the
judge's ceiling).
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os

from ..bench.dpg import CSV_COLUMNS, load_csv
from ..bench.runner import file_sha256, generate_images, score_run, write_manifest
from ..fileio import folder_lock
from ..images import make_grid, save_atomic
from .catalog import BENCH_MODELS, CONNECTORS, shipped_model_dir
from .data import FEEDBACK_SEED, HELDOUT_SEED, ShapesSceneDataset
from .judge import ShapesBackend
from .world import render

logger = logging.getLogger(__name__)

def write_heldout(n: int, out_dir: str, captions: str = "dense") -> tuple[str, dict, dict]:
    """(questions CSV path, {item_id: prompt}, {item_id: scene}) for n held-out prompts in the
    `captions` style (the same scenes and questions in either)."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "questions.csv" if captions == "dense" else f"questions-{captions}.csv")
    return (path, *write_questions(ShapesSceneDataset(n, seed=HELDOUT_SEED, captions=captions), "heldout", path))


def write_questions(data: ShapesSceneDataset, prefix: str, path: str) -> tuple[dict, dict]:
    """The dataset's prompts and questions as a DPG-Bench question CSV; ({id: prompt}, {id: scene})."""
    prompts, scenes = {}, {}
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for i in range(len(data)):
            scene, text, rows = data.item(i)
            writer.writerows([{**r, "item_id": f"{prefix}{i}"} for r in rows])
            prompts[f"{prefix}{i}"], scenes[f"{prefix}{i}"] = text, scene
    return prompts, scenes


def bench_prompts(pipe, prompts: dict[str, str], questions: str, out_dir: str, name: str, settings: dict,
                  steps: int = 25, guidance: float = 5.0, seed: int = 0, batch_size: int = 64,
                  layouts: dict | None = None) -> dict:
    """Draw `prompts` ({item id: prompt}, 4 images each) with the pipeline's connector and judge
    them against the questions of those items in the CSV `questions`: the held-out scenes benched
    with prompts of one's own (another reading or phrasing of each scene). Images and scores go
    under `out_dir`, as `name`; `settings` (with the call's) are its manifest. `layouts`: {item id:
    ella.regions.Layout}, to draw each prompt with its regions."""
    settings = {**settings, "steps": steps, "guidance": guidance, "seed": seed, "samples": 4}
    images = os.path.join(out_dir, "images", name)
    write_manifest(images, settings)
    generate_images(pipe, prompts, images, samples=4, seed=seed, batch_size=batch_size, num_inference_steps=steps,
                    guidance_scale=guidance, conditioning="ella", layouts=layouts)
    return score_run(load_csv(questions), images, ShapesBackend(), os.path.join(out_dir, "scores", name),
                     settings=settings)


def write_feedback_prompts(spec: str, path: str) -> None:
    """`ella feedback`'s ShapesWorld prompts, `shapes:N[:style]`: N scenes of their own seed stream
    (neither the training scenes nor the benchmark's), with their questions."""
    n, _, style = spec.split(":", 1)[1].partition(":")
    if not n.isdigit() or int(n) < 1:
        raise ValueError(f"ShapesWorld feedback prompts are shapes:N[:style], got {spec!r}")
    write_questions(ShapesSceneDataset(int(n), seed=FEEDBACK_SEED, captions=style or "dense"), "feedback", path)


def weights_sha256(model_dir: str, connector: str | None) -> str:
    """One digest of the weight files a bench row draws with (the UNet and the connector, or the
    base text encoder): images made with other weights are never mixed into its score."""
    if connector is None or connector in CONNECTORS:
        where = os.path.join(model_dir, f"ella-{connector}" if connector else "base_text_encoder")
    else:  # one's own connector: its export folder or file
        where = connector
    files = [os.path.join(model_dir, "unet", f) for f in os.listdir(os.path.join(model_dir, "unet"))]
    files += [os.path.join(where, f) for f in os.listdir(where)] if os.path.isdir(where) else [where]
    return hashlib.sha256("".join(file_sha256(f) for f in sorted(files) if f.endswith(".safetensors")).encode()).hexdigest()


def bench_row(name: str) -> tuple[str | None, str]:
    """(the connector `load_shapes_pipeline` takes, the row's folder name) of a bench model name, or
    of the path of one's own connector (`ella train`'s export, as `ella generate --ella` takes)."""
    if name in BENCH_MODELS:
        return BENCH_MODELS[name], name
    if os.path.exists(name):
        return name, "own-" + hashlib.sha256(os.path.abspath(name).encode()).hexdigest()[:12]
    raise ValueError(f"unknown ShapesWorld model {name}: one of {', '.join(BENCH_MODELS)}, or a connector's export"
                     " folder")


def run_shapes_bench(
    n_prompts: int = 200,
    models: list[str] = ("base", "tsc"),
    out_dir: str = "runs/shapes-bench",
    model_dir: str | None = None,
    steps: int = 25,
    guidance: float = 5.0,
    seed: int = 0,
    batch_size: int = 64,
    device: str | None = None,
    captions: str = "dense",
    llm_precision: str | None = None,
) -> dict[str, dict]:
    """The benchmark into `out_dir` (held by a lock: a second run on it stops at once).
    `llm_precision` (fp32, bf16, fp16, int8) runs the ELLA rows' LLM so; their images and scores
    are kept apart from full precision's."""
    with folder_lock(out_dir):
        return _run_shapes_bench(n_prompts, models, out_dir, model_dir, steps, guidance, seed, batch_size, device,
                                 captions, llm_precision)


def _run_shapes_bench(n_prompts, models, out_dir, model_dir, steps, guidance, seed, batch_size, device, captions,
                      llm_precision=None):
    from .models import load_shapes_pipeline

    rows = {name: bench_row(name) for name in models}  # every name checked before any work
    csv_path, prompts, scenes = write_heldout(n_prompts, out_dir, captions)
    # Other styles' images and scores in a folder of their own: a suffix ("ella" + "-relative")
    # could name another model's folder.
    style = () if captions == "dense" else (captions,)
    items = load_csv(csv_path)
    judge = ShapesBackend()
    summaries = {}

    gt_dir = os.path.join(out_dir, "images", "ground-truth")
    for item_id, scene in scenes.items():
        path = os.path.join(gt_dir, f"{item_id}.png")
        if not os.path.isfile(path):
            save_atomic(make_grid([render(scene)] * 4, cols=2), path)
    summaries["ground truth"] = score_run(items, gt_dir, judge, os.path.join(out_dir, "scores", "ground-truth"))

    for name in models:
        connector, row = rows[name]
        conditioning = "clip" if connector is None else "ella"
        precision = llm_precision if connector is not None and llm_precision not in (None, "fp32") else None
        pipe = load_shapes_pipeline(model_dir, connector=connector, device=device, llm_precision=precision)
        run_name = row + (f"-llm-{precision}" if precision else "")
        images_dir = os.path.join(out_dir, "images", *style, run_name)
        settings = dict(model=name, conditioning=conditioning, steps=steps, guidance=guidance, seed=seed,
                        resolution=32, samples=4, scheduler=type(pipe.scheduler).__name__, captions=captions,
                        weights_sha256=weights_sha256(model_dir or shipped_model_dir(), connector))
        if precision:  # only when set: manifests written before the option existed stay valid
            settings["llm_precision"] = precision
        write_manifest(images_dir, settings)
        generate_images(pipe, prompts, images_dir, samples=4, seed=seed, batch_size=batch_size,
                        num_inference_steps=steps, guidance_scale=guidance, conditioning=conditioning)
        summaries[name] = score_run(items, images_dir, judge, os.path.join(out_dir, "scores", *style, run_name),
                                    settings=settings)
        logger.info("%s: overall %.2f", name, summaries[name]["overall"])
    return summaries
