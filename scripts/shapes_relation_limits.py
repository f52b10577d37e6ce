"""What limits ShapesWorld's relation scores: attributes or placement?

The judge finds the two objects of a relation by colour and shape, so a relation can only be
right where both objects were drawn in their cells with the right colour and shape. From a bench
run's answers (per image crop), this splits relation questions into those whose two objects came
out right (colour and shape, at the named places) and the rest, and gives the relation accuracy
in each group: if it is high where the objects are right, relations are capped by attributes;
if it is low there too, by where the objects are put.

    python scripts/shapes_relation_limits.py runs/shapes-bench/questions.csv runs/shapes-bench/scores/ella
"""

from __future__ import annotations

import argparse
import json
import os

from ella.bench.dpg import load_csv
from ella.bench.vqa import read_jsonl


def main(csv_path: str, score_dir: str) -> dict:
    items = load_csv(csv_path)
    answers = {(r["item_id"], int(r["crop"]), r["proposition_id"]): r["answer"] == "yes"
               for r in read_jsonl(os.path.join(score_dir, "answers.jsonl"))}
    crops = sorted({crop for _, crop, _ in answers})
    groups = {"both objects right": [0, 0], "an object wrong": [0, 0]}
    for item in items.values():
        children = {}
        for q in item.questions:
            for parent in q.parents:
                children.setdefault(parent, []).append(q)
        for q in item.questions:
            if q.l1 != "relation":
                continue
            for crop in crops:
                if (item.item_id, crop, q.proposition_id) not in answers:
                    continue
                parts_right = all(
                    answers.get((item.item_id, crop, parent), False)
                    and all(answers.get((item.item_id, crop, c.proposition_id), False) for c in children.get(parent, [])
                            if c.l2 in ("attribute - color", "attribute - shape"))
                    for parent in q.parents)
                group = groups["both objects right" if parts_right else "an object wrong"]
                group[0] += answers[(item.item_id, crop, q.proposition_id)]
                group[1] += 1
    result = {name: {"relation questions": n, "answered yes": yes, "accuracy": round(100 * yes / n, 2) if n else None}
              for name, (yes, n) in groups.items()}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv")
    parser.add_argument("score_dir")
    args = parser.parse_args()
    main(args.csv, args.score_dir)
