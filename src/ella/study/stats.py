"""The statistics of pairwise votes, as GenAI-Arena reports them: Bradley-Terry strengths (the
maximum-likelihood fit; a tie, or "both bad", counts half a win each way) with bootstrap 95%
intervals, Elo for comparison, and win rates per model pair.

Bradley-Terry: P(i beats j) = 1 / (1 + exp(-(s_i - s_j))), fitted by Hunter's MM algorithm
(Hunter 2004, "MM algorithms for generalized Bradley-Terry models", Sec. 3), strengths centred
on their mean (only differences are identified), reported on the log-odds scale.
"""

from __future__ import annotations

import math
import random


def outcomes(votes: list[dict], question: str = "alignment") -> list[tuple[str, str, float]]:
    """(model a, model b, a's score: 1 win, 0 loss, 0.5 tie or both bad) per vote."""
    rows = []
    for v in votes:
        answer = v[question]
        score = {"left": 1.0, "right": 0.0}.get(answer, 0.5)
        rows.append((v["left_model"], v["right_model"], score))
    return rows


def bradley_terry(rows: list[tuple[str, str, float]], models: list[str], tolerance: float = 1e-10,
                  prior: float = 0.5, max_iterations: int = 100_000) -> dict[str, float]:
    """Strengths (log scale, mean 0), iterated until no strength moves by more than `tolerance`
    (lopsided votes, 200-0, converge slowly: a fixed count stopped 0.1 short). `prior`: a
    virtual tie of that weight between every pair of models, which keeps a model that never won
    or never lost finite."""
    wins = {m: 0.0 for m in models}
    games: dict[tuple[str, str], float] = {}
    for a, b, score in rows:
        wins[a] += score
        wins[b] += 1 - score
        games[(a, b)] = games.get((a, b), 0.0) + 1
    for i, a in enumerate(models):
        for b in models[i + 1:]:
            wins[a] += prior / 2
            wins[b] += prior / 2
            games[(a, b)] = games.get((a, b), 0.0) + prior
    p = {m: 1.0 for m in models}
    for _ in range(max_iterations):
        new = {}
        for m in models:
            denominator = sum(n / (p[a] + p[b]) for (a, b), n in games.items() if m in (a, b))
            new[m] = wins[m] / denominator if denominator else p[m]
        mean_log = sum(math.log(v) for v in new.values()) / len(new)
        new = {m: math.exp(math.log(v) - mean_log) for m, v in new.items()}
        moved = max(abs(math.log(new[m]) - math.log(p[m])) for m in models)
        p = new
        if moved < tolerance:
            break
    return {m: math.log(v) for m, v in p.items()}


def bootstrap(rows, models, rounds: int = 200, seed: int = 0, level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile intervals of the strengths over `rounds` resamplings of the votes."""
    rng = random.Random(seed)
    draws = {m: [] for m in models}
    for _ in range(rounds):
        sample = [rows[rng.randrange(len(rows))] for _ in rows]
        for m, s in bradley_terry(sample, models, tolerance=1e-8).items():
            draws[m].append(s)
    lo, hi = (1 - level) / 2, 1 - (1 - level) / 2
    return {m: (sorted(d)[int(lo * (len(d) - 1))], sorted(d)[int(round(hi * (len(d) - 1)))]) for m, d in draws.items()}


def elo(rows, models, k: float = 4.0, base: float = 1000.0) -> dict[str, float]:
    """Online Elo over the votes in their order (as GenAI-Arena shows it beside Bradley-Terry)."""
    rating = {m: base for m in models}
    for a, b, score in rows:
        expected = 1 / (1 + 10 ** ((rating[b] - rating[a]) / 400))
        rating[a] += k * (score - expected)
        rating[b] -= k * (score - expected)
    return rating


def win_rates(rows) -> dict[tuple[str, str], tuple[float, int]]:
    """{(a, b): (a's share of the points against b, votes)} for each pair, a before b by name."""
    table: dict[tuple[str, str], list[float]] = {}
    for a, b, score in rows:
        key, s = ((a, b), score) if a < b else ((b, a), 1 - score)
        table.setdefault(key, []).append(s)
    return {k: (sum(v) / len(v), len(v)) for k, v in sorted(table.items())}


def report(votes: list[dict], models: list[str], categories: dict[str, list[str]] | None = None,
           rounds: int = 200) -> dict:
    """Everything `ella study report` prints, for both questions, and per DPG-Bench category."""
    result = {"votes": len(votes), "models": models}
    for question in ("alignment", "aesthetics"):
        rows = outcomes(votes, question)
        if not rows:
            continue
        strengths, intervals = bradley_terry(rows, models), bootstrap(rows, models, rounds)
        result[question] = {
            "bradley_terry": {m: {"strength": strengths[m], "ci95": intervals[m]} for m in models},
            "elo": elo(rows, models),
            "win_rates": {f"{a} vs {b}": {"win_rate": w, "votes": n} for (a, b), (w, n) in win_rates(rows).items()},
        }
    if categories:
        per = {}
        for v in votes:
            for c in categories.get(v["item_id"], []):
                per.setdefault(c, []).append(v)
        result["alignment_by_category"] = {
            c: {f"{a} vs {b}": {"win_rate": w, "votes": n} for (a, b), (w, n) in win_rates(outcomes(vs)).items()}
            for c, vs in sorted(per.items())}
    return result
