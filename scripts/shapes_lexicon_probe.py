"""The ceiling for words no training caption uses: does the frozen LLM itself know them?

For each attribute a ShapesWorld prompt names (colour, size, shape, background, place), a linear
probe is trained on the LLM's token features of the *training* lexicon's words (`VARIED`: every
word a training caption uses), each word read in 24 training-style sentences whose other slots
vary, and tested on words no training caption uses: the `paraphrase` benchmark's (`PARAPHRASE`)
and a second list that neither ShapesWorld lexicon has (`OTHER` below; the probe is never fitted
on either). Beside it, leave-one-word-out on the training lexicon (the probe fitted without the
word it is tested on): how well an unseen word of the trained kind is read. And the nearest
training word of each held-out one (cosine of the features averaged over contexts).

What the probe reads is what a connector can read: a word the LLM's features put with its class
can be drawn by a connector trained only on the training lexicon; one they do not, cannot.

    python scripts/shapes_lexicon_probe.py --llm minilm,smollm2 --out docs/results/shapesworld-lexicon-probe.json
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch

from ella.fileio import write_text_atomic
from ella.shapes.phrasing import PARAPHRASE, VARIED

# Words neither lexicon has (a test of "words in general", not of the benchmark's list).
OTHER = {
    "color": {"red": ("maroon", "burgundy", "vermilion"), "green": ("mint", "moss", "pine"),
              "blue": ("cerulean", "ultramarine", "denim"), "yellow": ("mustard", "saffron", "amber"),
              "purple": ("lilac", "amethyst", "orchid")},
    "size": {"large": ("gigantic", "colossal", "vast"), "small": ("minuscule", "diminutive", "compact")},
    "shape": {"circle": ("sphere", "coin", "bubble"), "square": ("cube", "slab", "quadrilateral"),
              "triangle": ("cone", "trigon", "spike")},
    "background": {"black": ("onyx", "charcoal", "midnight"), "gray": ("silver", "pewter", "smoky"),
                   "white": ("chalk", "pearl", "cream")},
    "place": {0: ("topmost and leftmost",), 1: ("topmost, midway across",), 2: ("topmost and rightmost",),
              3: ("leftmost, midway down",), 4: ("amid everything, dead central",), 5: ("rightmost, midway down",),
              6: ("lowest and leftmost",), 7: ("lowest, midway across",), 8: ("lowest and rightmost",)},
}
TEMPLATES = ("a {size} {color} {shape} {place} on a {background} background",
             "{place}, a {size} {color} {shape}. the background is {background}",
             "draw a {size} {shape} in {color} {place}, {background} background")
CONTEXTS = 24  # sentences per word


def lexicon_words(lex) -> dict[str, dict]:
    """{attribute: {class: words}} of a phrasing lexicon."""
    return {"color": lex.colors, "size": lex.sizes, "shape": {k: tuple(s for s, _ in v) for k, v in lex.shapes.items()},
            "background": lex.backgrounds, "place": dict(enumerate(lex.places))}


def sentences(attribute: str, word: str, rng: random.Random) -> list[tuple[str, int, int]]:
    """(sentence, start, end of `word`) in training-style contexts; the other slots from VARIED."""
    train = lexicon_words(VARIED)
    out = []
    for i in range(CONTEXTS):
        slots = {a: rng.choice(rng.choice(list(train[a].values()))) for a in train if a != attribute}
        template = TEMPLATES[i % len(TEMPLATES)]
        head, tail = template.split("{" + attribute + "}")
        head, tail = head.format(**slots), tail.format(**slots)
        out.append((head + word + tail, len(head), len(head) + len(word)))
    return out


class WordFeatures:
    """The LLM's hidden state (the last layer unless `layer` says which), averaged over the tokens
    of one word in its sentence; `layer="all"` gives every layer, (layers + 1, B, D)."""

    def __init__(self, name: str, layer: int | str = -1):
        from ella.text_encoders import load_text_encoder

        self.model, self.tokenizer = load_text_encoder(name)
        self.tokenizer.pad_token = self.tokenizer.pad_token or self.tokenizer.eos_token  # decoder-only LLMs have none
        self.layer = layer

    def __call__(self, items: list[tuple[str, int, int]]) -> torch.Tensor:
        from ella.text_encoders import span_features

        return span_features(self.model, self.tokenizer, items, self.layer)  # ([layers,] B, D)


def fit_probe(x: torch.Tensor, y: torch.Tensor, classes: int, steps: int = 300) -> torch.nn.Module:
    """Multinomial logistic regression (L2), on standardised features."""
    torch.manual_seed(0)
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    probe = torch.nn.Linear(x.shape[1], classes)
    opt = torch.optim.LBFGS(probe.parameters(), max_iter=steps, line_search_fn="strong_wolfe")
    xs = (x - mean) / std

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(probe(xs), y) + 1e-3 * probe.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lambda z: probe((z - mean) / std).argmax(-1)


def word_accuracy(predict, feats: dict, labels: dict) -> tuple[float, dict]:
    """Share of (word, context) pairs read as the word's class; and per word."""
    per_word = {w: (predict(f) == labels[w]).float().mean().item() for w, f in feats.items()}
    return sum(per_word.values()) / len(per_word), per_word


def features(encode, lexicons: dict, attribute: str, rng: random.Random, class_index: dict) -> tuple[dict, dict]:
    """({(split, word): features of the word in its CONTEXTS sentences}, {(split, word): class})."""
    feats, labels = {}, {}
    for split, classes in lexicons.items():
        for c, words in classes.items():
            for w in dict.fromkeys(words):
                feats[(split, w)] = encode(sentences(attribute, w, rng))
                labels[(split, w)] = class_index[c]
    return feats, labels


def attribute_features(encode):
    """Per attribute: (attribute, its classes, {(split, word): features}, {(split, word): class
    index}, the training words' keys); the same sentences on every call."""
    rng = random.Random(0)
    for attribute, train_classes in lexicon_words(VARIED).items():
        class_index = {c: i for i, c in enumerate(train_classes)}
        lexicons = {"train": train_classes, "paraphrase": lexicon_words(PARAPHRASE)[attribute], "other": OTHER[attribute]}
        feats, labels = features(encode, lexicons, attribute, rng, class_index)
        yield attribute, list(train_classes), feats, labels, [k for k in feats if k[0] == "train"]


def probe_llm(name: str) -> dict:
    result = {}
    for attribute, classes, feats, labels, train_keys in attribute_features(WordFeatures(name)):
        x = torch.cat([feats[k] for k in train_keys])
        y = torch.cat([torch.full((len(feats[k]),), labels[k]) for k in train_keys])
        predict = fit_probe(x, y, len(classes))
        row = {"classes": len(classes), "chance": 100 / len(classes),
               "train_words": len(train_keys), "fit": 100 * word_accuracy(predict, {k: feats[k] for k in train_keys},
                                                                        labels)[0]}
        # Leave one training word out: the probe has never seen the word it reads.
        loo = []
        for k in train_keys:
            rest = [j for j in train_keys if j != k]
            if not any(labels[j] == labels[k] for j in rest):
                continue  # the only word of its class: nothing to generalise from
            p = fit_probe(torch.cat([feats[j] for j in rest]),
                          torch.cat([torch.full((len(feats[j]),), labels[j]) for j in rest]), len(classes), 100)
            loo.append((p(feats[k]) == labels[k]).float().mean().item())
        row["train_leave_one_word_out"] = 100 * sum(loo) / len(loo)
        centroids = {k: torch.nn.functional.normalize(feats[k].mean(0), dim=0) for k in train_keys}
        for split in ("paraphrase", "other"):
            keys = [k for k in feats if k[0] == split]
            acc, per_word = word_accuracy(predict, {k: feats[k] for k in keys}, labels)
            nearest = {}
            for k in keys:
                v = torch.nn.functional.normalize(feats[k].mean(0), dim=0)
                best = max(train_keys, key=lambda j: float(v @ centroids[j]))
                nearest[k[1]] = {"nearest": best[1], "right_class": labels[best] == labels[k],
                                 "probe": round(100 * per_word[k], 1)}
            row[split] = {"probe": 100 * acc, "nearest_word_right_class": 100 * sum(
                n["right_class"] for n in nearest.values()) / len(nearest), "words": nearest}
        result[attribute] = row
        print(f"{name:8s} {attribute:10s} chance {row['chance']:5.1f}  fit {row['fit']:5.1f}  "
              f"train LOWO {row['train_leave_one_word_out']:5.1f}  paraphrase {row['paraphrase']['probe']:5.1f}  "
              f"other {row['other']['probe']:5.1f}  (nearest word: {row['paraphrase']['nearest_word_right_class']:.0f} / "
              f"{row['other']['nearest_word_right_class']:.0f})", flush=True)
    return result


def probe_layers(name: str) -> dict:
    """Whether another layer than the last (the one ELLA's connectors read) knows the held-out
    words better: the probe fitted and tested on each hidden layer (0: the token embeddings)."""
    result = {}
    for attribute, classes, feats, labels, train_keys in attribute_features(WordFeatures(name, layer="all")):
        rows = []
        for layer in range(next(iter(feats.values())).shape[0]):
            predict = fit_probe(torch.cat([feats[k][layer] for k in train_keys]),
                                torch.cat([torch.full((feats[k].shape[1],), labels[k]) for k in train_keys]),
                                len(classes), 200)
            rows.append({split: 100 * word_accuracy(predict, {k: feats[k][layer] for k in feats if k[0] == split},
                                                    labels)[0] for split in ("paraphrase", "other")})
        best = max(range(len(rows)), key=lambda i: rows[i]["paraphrase"] + rows[i]["other"])
        result[attribute] = {"per_layer": rows, "best_layer": best, "last_layer": len(rows) - 1}
        print(f"{name:8s} {attribute:10s} last layer {rows[-1]['paraphrase']:5.1f} / {rows[-1]['other']:5.1f}  "
              f"best (layer {best}) {rows[best]['paraphrase']:5.1f} / {rows[best]['other']:5.1f}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llm", default="minilm,smollm2", help="comma-separated LLM names or paths")
    parser.add_argument("--out", default="docs/results/shapesworld-lexicon-probe.json")
    args = parser.parse_args()
    start, results = time.process_time(), {}
    for name in args.llm.split(","):
        results[name] = probe_llm(name)
        layers = probe_layers(name)
        # One layer may read one attribute's few held-out words better by chance: the sum over
        # the attributes says whether a layer reads new words better as a whole.
        layers["sum_over_attributes"] = [
            {split: sum(layers[a]["per_layer"][i][split] for a in layers) for split in ("paraphrase", "other")}
            for i in range(len(next(iter(layers.values()))["per_layer"]))]
        results.setdefault("layers", {})[name] = layers
    results["_meta"] = {"command": "python scripts/shapes_lexicon_probe.py --llm " + args.llm,
                        "contexts_per_word": CONTEXTS, "templates": TEMPLATES, "cpu_minutes": (time.process_time() - start) / 60,
                        "machine": "2-core development CPU"}
    write_text_atomic(args.out, json.dumps(results, indent=1))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
