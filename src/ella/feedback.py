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
   with `strict`, a candidate holding what the prompt does not ask for fails (the judge's
   whole-scene reading where it has one, else count and "nothing else" questions);
4. `train/`: `method: sft` fine-tunes on the kept (prompt, image) pairs, the original training
   data mixed in at `replay_fraction`; `method: dpo` (Diffusion-DPO, Wallace et al. 2023) on
   (winner, loser) pairs of the same prompt, against a frozen copy of the round's starting
   connector; its export starts the next round;
5. `bench/` (with `bench_csv`): the held-out prompts, drawn and judged with the new connector.

Never worse than the start: with `bench_csv`, round 0 (the starting connector) is benched too;
`best/` holds the best round's connector (ties to the earlier), and a round more than
`tolerance` points below the best so far ends the run. `rounds.json` says which round is best.
Every stage skips what is on disk, so a killed run, run again, resumes where it stopped; a run
folder remembers its settings (`run.json`) and refuses a rerun with others. Paths inside the run
are recorded relative to it.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field

from .hub import names_hub_connector

logger = logging.getLogger(__name__)

METHODS = ("sft", "dpo")
# `ella feedback`'s exit codes for a run that stopped early (a finished run exits 0)
EXIT_NOTHING_PASSED, EXIT_WORSE = 3, 4
PATH_FIELDS = ("train_config", "init_connector", "bench_csv")  # compared resolved


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
    tolerance: float = 1.0  # held-out points a round may fall below the best so far before the run stops
    method: str = "sft"  # sft: regress onto the kept images; dpo: prefer each prompt's winner to its loser
    dpo_beta: float = 2500.0
    # DPO pairs: None = the best passing and the worst failing candidate; a number = the best and
    # the worst candidate whenever their scores differ by at least this much (preference data
    # where few candidates pass)
    dpo_margin: float | None = None
    strict: bool = False  # also fail candidates holding what the prompt does not ask for
    seed: int = 0
    output_dir: str = "runs/feedback"

    def validate(self) -> "FeedbackConfig":
        from .bench.vqa import check_backend_name
        from .paths import require_path

        for name in ("rounds", "candidates", "steps_per_round", "num_inference_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.threshold <= 1:
            raise ValueError(f"threshold is a DPG score share and must be in [0, 1], got {self.threshold}")
        if not 0 <= self.replay_fraction < 1:
            raise ValueError(f"replay_fraction must be in [0, 1), got {self.replay_fraction}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not self.dpo_beta > 0 or not self.tolerance >= 0:
            raise ValueError("dpo_beta must be positive and tolerance at least 0")
        if self.dpo_margin is not None and not 0 < self.dpo_margin <= 1:
            raise ValueError(f"dpo_margin is a DPG score difference in (0, 1], got {self.dpo_margin}")
        check_backend_name(self.judge)
        for name in ("train_config", "init_connector", "prompts"):
            if not getattr(self, name):
                raise ValueError(f"set {name} in the feedback config")
        require_path(self.train_config, "training config")
        if not os.path.exists(self.init_connector) and not names_hub_connector(self.init_connector):
            raise FileNotFoundError(f"init_connector not found: {self.init_connector}")
        if self.replay_data and not _is_scheme(self.replay_data, "dataset_schemes", ("synthetic",)):
            if not os.path.exists(self.replay_data.split("*")[0].rstrip("/") or "."):
                raise FileNotFoundError(f"replay_data not found: {self.replay_data}")
        if not _is_scheme(self.prompts, "prompt_sources"):
            load_items(self.prompts)  # a CSV: its questions are checked now, before any work
        if self.bench_csv:
            load_items(self.bench_csv)
        return self


    def path(self, recorded: str) -> str:
        """A path as the run records it (relative to the run folder when inside it), usable."""
        return recorded if os.path.isabs(recorded) else os.path.join(self.output_dir, recorded)

    def record(self, path: str) -> str:
        """A path as the run records it: relative to the run folder when inside it (a copied run
        folder then points at its own rounds), absolute otherwise."""
        if names_hub_connector(path):
            return path
        full, run = os.path.abspath(path), os.path.abspath(self.output_dir)
        return os.path.relpath(full, run) if full.startswith(run + os.sep) else full

    def settings(self) -> dict:
        """What the run's results depend on (`run.json`): every field but `rounds` (more rounds
        continue a run) and `output_dir`, paths resolved."""
        out = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("rounds", "output_dir")}
        for name in PATH_FIELDS:
            out[name] = os.path.abspath(out[name]) if out[name] and not names_hub_connector(out[name]) else out[name]
        return out


def _is_scheme(spec: str, table: str, builtin: tuple[str, ...] = ()) -> bool:
    """Whether `spec` is SCHEME:... of a plugin's `table` (or a built-in scheme), not a path."""
    from .plugins import registry

    scheme, sep, _ = spec.partition(":")
    return bool(sep) and (scheme in getattr(registry(), table) or scheme in builtin) and not os.path.exists(spec)


def open_run_folder(config: FeedbackConfig, fresh: bool = False) -> None:
    """Record the run's settings in `run.json`, or check that a rerun has the same ones: a rerun
    with other settings is refused, naming the differences, unless `fresh` (the old run is then
    moved aside, never deleted)."""
    from .fileio import write_text_atomic

    path = os.path.join(config.output_dir, "run.json")
    settings = config.settings()
    if os.path.isdir(config.output_dir) and os.listdir(config.output_dir):
        before = _read_json(path) if os.path.isfile(path) else None
        if before != settings:
            if before is None:
                differences = "it records no settings (made by an older version, or not by ella feedback)"
            else:
                differences = "; ".join(f"{k} {before.get(k)!r} -> {v!r}" for k, v in settings.items()
                                        if before.get(k) != v) or "its settings differ"
            if not fresh:
                raise ValueError(f"{config.output_dir} holds a feedback run made with other settings ({differences}):"
                                 " pass --fresh to start over (the old run is moved aside), or choose another"
                                 " output_dir")
            n = 1
            while os.path.exists(f"{config.output_dir}.old-{n}"):
                n += 1
            os.replace(config.output_dir, f"{config.output_dir}.old-{n}")
            logger.warning("--fresh: the old run in %s is moved to %s.old-%d", config.output_dir, config.output_dir, n)
    os.makedirs(config.output_dir, exist_ok=True)
    write_text_atomic(path, json.dumps(settings, indent=1))


def _read_json(path: str) -> dict:
    from .fileio import read_json_object

    return read_json_object(path, "feedback run file")


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

    if not _is_scheme(config.prompts, "prompt_sources"):
        return load_items(config.prompts)
    path = os.path.join(config.output_dir, "prompts.csv")
    if not os.path.isfile(path):
        os.makedirs(config.output_dir, exist_ok=True)
        lookup("prompt_sources", config.prompts.partition(":")[0])(config.prompts, path)
    return load_items(path)


def run_feedback(config: FeedbackConfig, fresh: bool = False) -> list[dict]:
    """All rounds (skipping what is done); returns each round's summary (also in rounds.json, with
    paths relative to the run). The best round's summary has `best: true` and its connector is
    exported to `best/`; a run that ended early says why in its last round's `stopped`
    ("nothing passed" or "worse")."""
    config.validate()
    open_run_folder(config, fresh)
    items = prompt_items(config)
    if not config.bench_csv:
        logger.warning("no bench_csv: nothing checks a round against the start, so nothing guards against a worse"
                       " connector; best/ is the last round's, unchecked")
    connector, summaries = config.init_connector, []
    # The frozen parts, loaded once for the whole run (only if a stage still has work).
    frozen = FrozenOnce(round_train_config(config, config.output_dir, connector))
    if config.bench_csv:  # round 0: the starting connector, benched as every round is
        summaries.append({"round": 0, "connector": connector,
                          "bench": bench_round(config, frozen, connector, os.path.join(config.output_dir, "round-00"))})
    for r in range(1, config.rounds + 1):
        summary = run_round(config, items, r, connector, frozen)
        summaries.append(summary)
        best = best_round(summaries)
        if summary["kept"] == 0:
            summary["stopped"] = "nothing passed"
            summary["stop_line"] = (f"round {r}: no candidate reached the threshold {config.threshold:g}"
                                    f"{' (or no prompt had a winner and a loser)' if config.method == 'dpo' else ''};"
                                    f" stopped; best is round {best['round']}")
        elif "bench" in summary and summary["bench"]["overall"] < best["bench"]["overall"] - config.tolerance:
            summary["stopped"] = "worse"
            summary["stop_line"] = (f"round {r}: {summary['bench']['overall']:.2f} < round {best['round']}:"
                                    f" {best['bench']['overall']:.2f}; stopped; best is round {best['round']}")
        finish_round(config, summaries, best)
        if "stopped" in summary:
            logger.warning("%s", summary["stop_line"])
            break
        connector = summary["connector"]
    return summaries


def best_round(summaries: list[dict]) -> dict:
    """The best round by the held-out score (ties to the earlier); without a bench, the last
    round that trained a connector (round 0 is the start)."""
    trained = [s for s in summaries if "connector" in s]
    benched = [s for s in trained if "bench" in s]
    if benched:
        return max(benched, key=lambda s: (s["bench"]["overall"], -s["round"]))
    return trained[-1] if trained else {"round": 0, "connector": summaries[0].get("connector_in")}


def finish_round(config: FeedbackConfig, summaries: list[dict], best: dict) -> None:
    """Mark the best round, export its connector to `best/`, write rounds.json (paths relative
    to the run)."""
    from .fileio import write_text_atomic

    for s in summaries:
        s["best"] = s is best
    export_best(config, best.get("connector") or config.init_connector)
    recorded = [{k: config.record(v) if k in ("connector", "connector_in") else v for k, v in s.items()}
                for s in summaries]
    write_text_atomic(os.path.join(config.output_dir, "rounds.json"), json.dumps(recorded, indent=2))


def export_best(config: FeedbackConfig, connector: str) -> str:
    """`best/`: the connector, as `save_pretrained` writes it, replacing the folder whole."""
    import shutil

    from .pipelines.loading import load_connector

    path = os.path.join(config.output_dir, "best")
    marker = os.path.join(path, "source.json")
    if os.path.isfile(marker) and _read_json(marker).get("connector") == config.record(connector):
        return path
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    load_connector(connector).save_pretrained(tmp)
    with open(os.path.join(tmp, "source.json"), "w", encoding="utf-8") as f:
        json.dump({"connector": config.record(connector)}, f)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return path


def run_round(config: FeedbackConfig, items: dict, r: int, connector: str, frozen: FrozenOnce) -> dict:
    folder = os.path.join(config.output_dir, f"round-{r:02d}")
    train_config = round_train_config(config, folder, connector)
    if not os.path.isfile(os.path.join(folder, "kept.jsonl")):
        from .bench.vqa import get_backend

        judge = get_backend(config.judge)
        candidates = generate_candidates(config, frozen.pipeline(connector), items, folder, r, judge)
        scores = judge_candidates(config, candidates, folder, judge)
        keep(config, items, scores, folder)
    with open(os.path.join(folder, "kept.jsonl"), encoding="utf-8") as f:
        kept = [json.loads(line) for line in f]
    with open(os.path.join(folder, "keep.json"), encoding="utf-8") as f:
        summary = {"round": r, "connector_in": connector, "kept": len(kept), "prompts": len(items),
                   "candidates": len(items) * config.candidates, **json.load(f)}
    if not kept:
        return summary
    if not train_config.replay_data and len(kept) < train_config.batch_size:  # a few kept pairs: one batch holds them all
        logger.info("round %d: %d kept pairs, fewer than the batch size %d: batches of %d", r, len(kept),
                    train_config.batch_size, len(kept))
        train_config.batch_size = len(kept)
    summary["connector"], summary["train_cpu_minutes"] = fine_tune(train_config, folder, frozen)
    if config.bench_csv:
        summary["bench"] = bench_round(config, frozen, summary["connector"], folder)
    return summary


def round_train_config(config: FeedbackConfig, folder: str, connector: str):
    """The fine-tuning config of a round: the recipe, from `connector`, on the kept pairs (DPO:
    on the pairs alone, with `connector` as the reference)."""
    from .train.config import load_config

    overrides = {**config.train_overrides, "init_connector": connector, "output_dir": os.path.join(folder, "train"),
                 "train_data": os.path.join(folder, "kept", "manifest.jsonl"),
                 "replay_data": config.replay_data or None,
                 "replay_fraction": config.replay_fraction, "max_steps": config.steps_per_round, "cache_dir": None,
                 "captions": None, "validate_every": 0, "resume": True, "seed": config.seed}
    if config.method == "dpo":
        overrides.update(objective="dpo", dpo_beta=config.dpo_beta, replay_data=None, caption_dropout=0.0)
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


def reads_scenes(judge) -> bool:
    """Whether the judge reads a whole scene (`VQABackend.scene_problems`) for the strict check."""
    from .bench.vqa import VQABackend

    return type(judge).scene_problems is not VQABackend.scene_problems


def generate_candidates(config: FeedbackConfig, pipe, items: dict, folder: str, r: int, judge) -> dict:
    """K candidates per prompt (`P__k`), each with its recorded seed; returns the candidates' items
    (with `strict`, and a judge that reads no whole scene, each also asked `strict_questions`)."""
    from .bench.dpg import CSV_COLUMNS, strict_questions
    from .bench.runner import generate_images, write_manifest

    candidates = {f"{i}__{k}": item for i, item in items.items() for k in range(config.candidates)}
    images = os.path.join(folder, "images")
    seed = config.seed * 1_000 + r  # each round draws new candidates
    write_manifest(images, {"connector": config.init_connector if r == 1 else "previous round's export",
                            "seed": seed, "steps": config.num_inference_steps, "guidance": config.guidance_scale,
                            "seed_rule": "bench.runner.sample_seed(seed, candidate, 0)"})
    generate_images(pipe, {c: item.prompt for c, item in candidates.items()}, images, samples=1, seed=seed,
                    num_inference_steps=config.num_inference_steps, guidance_scale=config.guidance_scale)
    ask_more = config.strict and not reads_scenes(judge)
    path = os.path.join(folder, "candidates.csv")
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for c, item in candidates.items():
            for q in item.questions + (strict_questions(item) if ask_more else []):
                writer.writerow({"item_id": c, "text": item.prompt, "keywords": "", "proposition_id": q.proposition_id,
                                 "dependency": ",".join(q.parents) or "0", "category_broad": q.l1,
                                 "category_detailed": q.l2, "tuple": q.tuple, "question_natural_language": q.question})
    return load_items(path)


def judge_candidates(config: FeedbackConfig, candidates: dict, folder: str, judge) -> dict[str, float]:
    """{candidate: DPG score in [0, 1]}, by the VQA backend through the corrected scorer; with
    `strict`, a candidate whose image holds what its prompt does not ask for scores 0 (the
    problems are in `strict.jsonl`)."""
    from .bench.runner import score_run
    from .images import open_image

    out = os.path.join(folder, "scores")
    score_run(candidates, os.path.join(folder, "images"), judge, out, tiles=1)
    with open(os.path.join(out, "scores.jsonl"), encoding="utf-8") as f:
        scores = {r["item_id"]: (r["score"] or 0.0) for r in map(json.loads, f)}
    if config.strict and reads_scenes(judge):
        lines = []
        for c, item in candidates.items():
            problems = judge.scene_problems(open_image(os.path.join(folder, "images", f"{c}.png")), item)
            if problems:
                scores[c] = 0.0
                lines.append(json.dumps({"candidate": c, "problems": problems}) + "\n")
        with open(os.path.join(folder, "strict.jsonl"), "w", encoding="utf-8") as f:
            f.writelines(lines)
    return scores


def keep(config: FeedbackConfig, items: dict, scores: dict[str, float], folder: str) -> list[dict]:
    """The training manifest: the candidates that pass (all, or each prompt's best); for DPO, per
    prompt its best passing candidate (the winner) and its worst failing one (the loser). A
    prompt without a winner (or, for DPO, a loser) is skipped and counted in `keep.json`."""
    import shutil

    from .fileio import write_text_atomic

    kept, no_winner, no_loser = [], 0, 0
    for i, item in items.items():
        ranked = sorted(((scores.get(f"{i}__{k}", 0.0), k) for k in range(config.candidates)),
                        key=lambda sk: (-sk[0], sk[1]))
        passing = [(score, k) for score, k in ranked if score >= config.threshold]
        failing = [(score, k) for score, k in ranked if score < config.threshold]
        if config.method == "dpo" and config.dpo_margin is not None:  # preferences by score, not pass/fail
            best, worst = ranked[0], min(ranked, key=lambda sk: (sk[0], sk[1]))
            passing, failing = ([best], [worst]) if best[0] - worst[0] >= config.dpo_margin else ([], ranked)
        no_winner += not passing
        if config.method == "dpo":
            if passing and not failing:
                no_loser += 1
            if passing and failing:
                (score, k), (loser_score, loser) = passing[0], min(failing, key=lambda sk: (sk[0], sk[1]))
                kept.append({"key": f"{i}__{k}", "image": f"{i}__{k}.png", "loser": f"{i}__{loser}.png",
                             "caption": item.prompt, "score": score, "loser_score": loser_score})
            continue
        for score, k in passing[:1] if config.best_of_k else passing:
            kept.append({"key": f"{i}__{k}", "image": f"{i}__{k}.png", "caption": item.prompt, "score": score})
    os.makedirs(os.path.join(folder, "kept"), exist_ok=True)
    for record in kept:
        for name in (record["image"], record.get("loser")):
            if name:
                shutil.copyfile(os.path.join(folder, "images", name), os.path.join(folder, "kept", name))
    lines = "".join(json.dumps(r) + "\n" for r in kept)
    write_text_atomic(os.path.join(folder, "kept", "manifest.jsonl"), lines)
    skipped = {"skipped_no_winner": no_winner, **({"skipped_no_loser": no_loser} if config.method == "dpo" else {})}
    write_text_atomic(os.path.join(folder, "keep.json"), json.dumps(skipped))
    write_text_atomic(os.path.join(folder, "kept.jsonl"), lines)  # last: the stage's "done" mark
    return kept


def fine_tune(train_config, folder: str, frozen: FrozenOnce) -> tuple[str, float]:
    """Train the round (resuming from its checkpoints); returns (its export, training CPU-minutes)."""
    from .fileio import write_text_atomic
    from .train import train

    done = os.path.join(folder, "trained.json")
    if not os.path.isfile(done):
        result = train(train_config, frozen.parts)
        write_text_atomic(done, json.dumps({"export": os.path.relpath(result.export_dir, folder),
                                            "cpu_minutes": result.cpu_seconds / 60}))
    record = _read_json(done)
    return os.path.join(folder, record["export"]), record["cpu_minutes"]


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
