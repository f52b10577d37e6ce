"""A simulated user study on ShapesWorld (docs/study.md): `ella bench shapes` draws the held-out
prompts with the base model, `tsc-dense` and the default `tsc`; simulated raters vote through the
study server, each preferring the image in which the exact judge finds more of the prompt (its
DPG score; equal scores: a tie); `ella study report` then ranks the models.

    python scripts/shapes_study_simulated.py OUT [--prompts 30] [--raters 10]
"""

from __future__ import annotations

import argparse
import json
import os

MODELS = ("base", "tsc-dense", "tsc")


def item_scores(bench: str, model: str) -> dict[str, float]:
    with open(os.path.join(bench, "scores", model, "scores.jsonl"), encoding="utf-8") as f:
        return {r["item_id"]: r["score"] or 0.0 for r in map(json.loads, f)}


def simulate(out: str, prompts: int, raters: int, seed: int = 0) -> dict:
    from ella.shapes.bench import run_shapes_bench
    from ella.study.app import StudyServer
    from ella.study.runs import load_study
    from ella.study.stats import report
    from ella.study.store import VoteStore

    bench = os.path.join(out, "bench")
    run_shapes_bench(prompts, list(MODELS), bench)
    scores = {m: item_scores(bench, m) for m in MODELS}
    study = load_study([os.path.join(bench, "images", m) for m in MODELS], csv=os.path.join(bench, "questions.csv"))
    server = StudyServer(study, VoteStore("sqlite:///" + os.path.abspath(os.path.join(out, "votes.db"))), seed)
    model_of = {r.folder: r.name for r in study.runs}
    for r in range(raters):
        rater = f"simulated-{r}"
        while not (pair := server.next_pair(rater)).get("done"):
            left, right = (model_of[os.path.dirname(pair[side])] for side in ("left", "right"))
            item = os.path.basename(pair["left"])[:-4]
            a, b = scores[left][item], scores[right][item]
            answer = "left" if a > b else "right" if b > a else "tie"
            server.vote(pair["shown_id"], rater, answer, answer)
    result = report(server.store.all_votes(), study.models, study.categories)
    with open(os.path.join(out, "study.json"), "w", encoding="utf-8") as f:  # for `ella study report --study OUT`
        json.dump({"runs": [r.folder for r in study.runs], "csv": os.path.join(bench, "questions.csv"),
                   "prompts": None, "db": "sqlite:///" + os.path.abspath(os.path.join(out, "votes.db"))}, f, indent=2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--prompts", type=int, default=30)
    parser.add_argument("--raters", type=int, default=10)
    args = parser.parse_args()
    result = simulate(args.out, args.prompts, args.raters)
    print(json.dumps({m: v["strength"] for m, v in result["alignment"]["bradley_terry"].items()}, indent=2))


if __name__ == "__main__":
    main()
