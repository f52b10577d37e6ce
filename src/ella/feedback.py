"""`ella feedback CONFIG`: fine-tune a connector from image-understanding feedback, the data
engine's second half (DreamSync, Sun et al. 2023: generate, let a VQA model judge the images
against the prompt's questions, keep what it approves, fine-tune on it, repeat; here only the
connector trains, so a round is cheap).

A round, in `OUTPUT_DIR/round-NN/`:
1. `candidates.csv`, `images/`: K candidates per prompt from the current connector, every seed
   recorded (`bench.runner.sample_seed`), the candidates of prompt P named `P__k`;
2. `scores/`: each candidate judged by the VQA backend and scored by the corrected DPG scorer
   (dependencies respected; answers resumable, as `ella bench dpg score`);
3. `kept.jsonl`, `kept/`: the candidates whose score reaches `threshold` (best-of-K if set);
   a round where none does says so and stops;
4. `train/`: the connector fine-tuned on the kept (prompt, image) pairs, the original training
   data mixed in at `replay_fraction`; its export starts the next round;
5. `bench/` (with `bench_csv`): the held-out prompts, drawn and judged with the new connector.
Every stage skips what is on disk, so a killed run, run again, resumes where it stopped.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


@dataclass
class FeedbackConfig:
    train_config: str = ""  # the connector's training recipe (YAML): model, LLM, connector, resolution
    init_connector: str = ""  # the connector round 1 starts from (an export folder or .safetensors file)
    prompts: str = ""  # a DPG-Bench-style question CSV, or SCHEME:... of a plugin's prompt source (shapes:N)
    judge: str = "mplug"  # a VQA backend, as `ella bench dpg score --vqa` names it
    rounds: int = 2
    candidates: int = 4  # K per prompt
    threshold: float = 1.0  # keep a candidate whose DPG score (0-1) reaches this: 1.0 = every question passed
    best_of_k: bool = True  # keep only each prompt's best passing candidate
    replay_data: str = ""  # the original training data, mixed into every fine-tuning round
    replay_fraction: float = 0.5
    steps_per_round: int = 200
    train_overrides: dict = field(default_factory=dict)  # e.g. {lr: 3.0e-4, batch_size: 32}
    num_inference_steps: int = 25
    guidance_scale: float = 5.0
    bench_csv: str = ""  # held-out prompts (never used in feedback) drawn and judged after every round
    seed: int = 0
    output_dir: str = "runs/feedback"

    def validate(self) -> "FeedbackConfig":
        from .bench.vqa import check_backend_name
        from .paths import require_path
        from .plugins import registry

        for name in ("rounds", "candidates", "steps_per_round", "num_inference_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.threshold <= 1:
            raise ValueError(f"threshold is a DPG score share and must be in [0, 1], got {self.threshold}")
        if not 0 <= self.replay_fraction < 1:
            raise ValueError(f"replay_fraction must be in [0, 1), got {self.replay_fraction}")
        check_backend_name(self.judge)
        for name in ("train_config", "init_connector", "prompts"):
            if not getattr(self, name):
                raise ValueError(f"set {name} in the feedback config")
        require_path(self.train_config, "training config")
        scheme, sep, _ = self.prompts.partition(":")
        if not (sep and scheme in registry().prompt_sources and not os.path.exists(self.prompts)):
            load_items(self.prompts)  # a CSV: its questions are checked now, before any work
        if self.bench_csv:
            load_items(self.bench_csv)
        return self


def load_items(path: str) -> dict:
    """A question CSV's items, every one with questions and an intact dependency graph."""
    from .bench.dpg import DPGDataError, check_integrity, load_csv

    items = load_csv(path)
    problems = check_integrity(items) + [f"item {i}, row {q.row}: no question text" for i, item in items.items()
                                         for q in item.questions if not q.question.strip()]
    if problems:
        raise DPGDataError(f"{path}: {len(problems)} problem(s) with the prompts' questions; first: {problems[0]}")
    return items


def prompt_items(config: FeedbackConfig) -> dict:
    """The feedback prompts: the CSV, or the one a plugin's prompt source writes (once) into the run."""
    from .plugins import lookup

    scheme, sep, _ = config.prompts.partition(":")
    source = lookup("prompt_sources", scheme) if sep and not os.path.exists(config.prompts) else None
    if source is None:
        return load_items(config.prompts)
    path = os.path.join(config.output_dir, "prompts.csv")
    if not os.path.isfile(path):
        os.makedirs(config.output_dir, exist_ok=True)
        source(config.prompts, path)
    return load_items(path)


def run_feedback(config: FeedbackConfig) -> list[dict]:
    """All rounds (skipping what is done); returns each round's summary (also in rounds.json)."""
    from .fileio import write_text_atomic

    config.validate()
    items = prompt_items(config)
    connector, summaries = config.init_connector, []
    # The frozen parts, loaded once for the whole run (only if a stage still has work).
    frozen = FrozenOnce(round_train_config(config, config.output_dir, connector))
    if config.bench_csv:  # round 0: the starting connector, benched as every round is
        summaries.append({"round": 0, "connector": connector,
                          "bench": bench_round(config, frozen, connector, os.path.join(config.output_dir, "round-00"))})
    for r in range(1, config.rounds + 1):
        summary = run_round(config, items, r, connector, frozen)
        summaries.append(summary)
        write_text_atomic(os.path.join(config.output_dir, "rounds.json"), json.dumps(summaries, indent=2))
        if summary["kept"] == 0:
            logger.warning("round %d: no candidate reached the threshold %.2f: stopping (nothing to train on)",
                           r, config.threshold)
            break
        connector = summary["connector"]
    return summaries


def run_round(config: FeedbackConfig, items: dict, r: int, connector: str, frozen: FrozenOnce) -> dict:
    folder = os.path.join(config.output_dir, f"round-{r:02d}")
    train_config = round_train_config(config, folder, connector)
    if not os.path.isfile(os.path.join(folder, "kept.jsonl")):
        candidates = generate_candidates(config, frozen.pipeline(connector), items, folder, r)
        scores = judge_candidates(config, candidates, folder)
        keep(config, items, scores, folder)
    with open(os.path.join(folder, "kept.jsonl"), encoding="utf-8") as f:
        kept = [json.loads(line) for line in f]
    summary = {"round": r, "connector_in": connector, "kept": len(kept), "prompts": len(items),
               "candidates": len(items) * config.candidates}
    if not kept:
        return summary
    if not config.replay_data and len(kept) < train_config.batch_size:  # a few kept pairs: one batch holds them all
        logger.info("round %d: %d kept pairs, fewer than the batch size %d: batches of %d", r, len(kept),
                    train_config.batch_size, len(kept))
        train_config.batch_size = len(kept)
    summary["connector"], summary["train_cpu_minutes"] = fine_tune(train_config, folder, frozen)
    if config.bench_csv:
        summary["bench"] = bench_round(config, frozen, summary["connector"], folder)
    return summary


def round_train_config(config: FeedbackConfig, folder: str, connector: str):
    """The fine-tuning config of a round: the recipe, from `connector`, on the kept pairs."""
    from .train.config import load_config

    overrides = {**config.train_overrides, "init_connector": connector, "output_dir": os.path.join(folder, "train"),
                 "train_data": os.path.join(folder, "kept", "manifest.jsonl"),
                 "replay_data": config.replay_data or None,
                 "replay_fraction": config.replay_fraction, "max_steps": config.steps_per_round, "cache_dir": None,
                 "captions": None, "validate_every": 0, "resume": True, "seed": config.seed}
    return load_config(config.train_config, overrides)


class FrozenOnce:
    """The recipe's frozen parts (UNet, VAE, LLM), loaded on first use and shared by every
    round's generation, fine-tuning and bench: at real scale a load costs more than a short round."""

    def __init__(self, train_config):
        self.train_config, self._parts = train_config, None

    @property
    def parts(self):
        if self._parts is None:
            from .devices import resolve_device
            from .train.components import load_frozen_parts
            from .train.loop import frozen_dtype

            device = resolve_device(None)
            self._parts = load_frozen_parts(self.train_config, device, frozen_dtype(self.train_config, device))
        return self._parts

    def pipeline(self, connector: str):
        """The frozen parts with `connector`, as a pipeline."""
        from .pipelines.loading import load_connector
        from .train.loop import training_pipeline

        self.parts.unet.eval()  # after a fine-tuning, which wraps it in a module set to train mode
        return training_pipeline(self.train_config, self.parts, load_connector(connector).to(self.parts.unet.device))


def generate_candidates(config: FeedbackConfig, pipe, items: dict, folder: str, r: int) -> dict:
    """K candidates per prompt (`P__k`), each with its recorded seed; returns the candidates' items."""
    from .bench.dpg import CSV_COLUMNS
    from .bench.runner import generate_images, write_manifest

    candidates = {f"{i}__{k}": item for i, item in items.items() for k in range(config.candidates)}
    images = os.path.join(folder, "images")
    seed = config.seed * 1_000 + r  # each round draws new candidates
    write_manifest(images, {"connector": config.init_connector if r == 1 else "previous round's export",
                            "seed": seed, "steps": config.num_inference_steps, "guidance": config.guidance_scale,
                            "seed_rule": "bench.runner.sample_seed(seed, candidate, 0)"})
    generate_images(pipe, {c: item.prompt for c, item in candidates.items()}, images, samples=1, seed=seed,
                    num_inference_steps=config.num_inference_steps, guidance_scale=config.guidance_scale)
    path = os.path.join(folder, "candidates.csv")
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for c, item in candidates.items():
            for q in item.questions:
                writer.writerow({"item_id": c, "text": item.prompt, "keywords": "", "proposition_id": q.proposition_id,
                                 "dependency": ",".join(q.parents) or "0", "category_broad": q.l1,
                                 "category_detailed": q.l2, "tuple": q.tuple, "question_natural_language": q.question})
    return load_items(path)


def judge_candidates(config: FeedbackConfig, candidates: dict, folder: str) -> dict[str, float]:
    """{candidate: DPG score in [0, 1]}, by the VQA backend through the corrected scorer."""
    from .bench.runner import score_run
    from .bench.vqa import get_backend

    out = os.path.join(folder, "scores")
    score_run(candidates, os.path.join(folder, "images"), get_backend(config.judge), out, tiles=1)
    with open(os.path.join(out, "scores.jsonl"), encoding="utf-8") as f:
        return {r["item_id"]: (r["score"] or 0.0) for r in map(json.loads, f)}


def keep(config: FeedbackConfig, items: dict, scores: dict[str, float], folder: str) -> list[dict]:
    """The candidates that pass (all of them, or each prompt's best), as a training manifest."""
    import shutil

    from .fileio import write_text_atomic

    kept = []
    for i, item in items.items():
        passing = [(scores.get(f"{i}__{k}", 0.0), k) for k in range(config.candidates)
                   if scores.get(f"{i}__{k}", 0.0) >= config.threshold]
        passing.sort(key=lambda sk: (-sk[0], sk[1]))
        for score, k in passing[:1] if config.best_of_k else passing:
            kept.append({"key": f"{i}__{k}", "image": f"{i}__{k}.png", "caption": item.prompt, "score": score})
    os.makedirs(os.path.join(folder, "kept"), exist_ok=True)
    for record in kept:
        shutil.copyfile(os.path.join(folder, "images", record["image"]), os.path.join(folder, "kept", record["image"]))
    lines = "".join(json.dumps(r) + "\n" for r in kept)
    write_text_atomic(os.path.join(folder, "kept", "manifest.jsonl"), lines)
    write_text_atomic(os.path.join(folder, "kept.jsonl"), lines)  # last: the stage's "done" mark
    return kept


def fine_tune(train_config, folder: str, frozen: FrozenOnce) -> tuple[str, float]:
    """Train the round (resuming from its checkpoints); returns (its export, training CPU-minutes)."""
    from .fileio import write_text_atomic
    from .train import train

    done = os.path.join(folder, "trained.json")
    if not os.path.isfile(done):
        result = train(train_config, frozen.parts)
        write_text_atomic(done, json.dumps({"export": result.export_dir, "cpu_minutes": result.cpu_seconds / 60}))
    with open(done, encoding="utf-8") as f:
        record = json.load(f)
    return record["export"], record["cpu_minutes"]


def bench_round(config: FeedbackConfig, frozen: FrozenOnce, connector: str, folder: str) -> dict:
    """The held-out prompts, 4 images each, drawn with the round's connector and judged."""
    from .bench.runner import generate_images, score_run
    from .bench.vqa import get_backend

    items = load_items(config.bench_csv)
    images, out = os.path.join(folder, "bench", "images"), os.path.join(folder, "bench", "scores")
    if not os.path.isfile(os.path.join(out, "summary.json")):
        generate_images(frozen.pipeline(connector), {i: item.prompt for i, item in items.items()}, images, samples=4,
                        seed=config.seed, num_inference_steps=config.num_inference_steps,
                        guidance_scale=config.guidance_scale)
        score_run(items, images, get_backend(config.judge), out)
    with open(os.path.join(out, "summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    return {"overall": summary["overall"], **summary["l1"]}


def load_feedback_config(path: str, overrides: dict | None = None) -> FeedbackConfig:
    """Defaults <- the YAML file <- `--key value` overrides, checked before any work."""
    from .train.config import load_config

    return load_config(path, overrides, FeedbackConfig)
