"""`ella feedback`: rounds of generate, judge, keep, fine-tune, on tiny random components, judged
by replayed answers (chosen to pass one candidate per prompt) and by ShapesWorld's exact judge."""

import json
import os

import pytest
import torch
import yaml

from ella import ELLA
from ella.cli import main
from ella.feedback import load_feedback_config, run_feedback

TINY = os.path.join(os.path.dirname(__file__), "..", "configs", "tiny.yaml")


@pytest.fixture
def setup(tmp_path):
    """A tiny connector to start from, two ShapesWorld prompts, and answers that pass candidate 0 only."""
    connector = ELLA.from_preset("tiny")
    connector.save_pretrained(tmp_path / "init")
    from ella.bench.dpg import load_csv
    from ella.shapes.bench import write_feedback_prompts

    write_feedback_prompts("shapes:2", str(tmp_path / "prompts.csv"))
    answers = tmp_path / "answers.jsonl"
    with open(answers, "w") as f:
        for item_id, item in load_csv(str(tmp_path / "prompts.csv")).items():
            for k in range(3):
                for q in item.questions:
                    f.write(json.dumps({"item_id": f"{item_id}__{k}", "crop": 0, "proposition_id": q.proposition_id,
                                        "question": q.question, "answer": "yes" if k == 0 else "no"}) + "\n")
    config = dict(train_config=TINY, init_connector=str(tmp_path / "init"), prompts=str(tmp_path / "prompts.csv"),
                  judge=f"replay:{answers}", rounds=2, candidates=3, threshold=1.0, steps_per_round=3,
                  num_inference_steps=2, replay_data="synthetic:8", replay_fraction=0.5,
                  train_overrides={"batch_size": 2, "ema_decay": 0.0, "warmup_steps": 1},
                  output_dir=str(tmp_path / "run"))
    path = tmp_path / "feedback.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path), tmp_path


def _weights(folder) -> dict:
    return ELLA.from_pretrained(str(folder)).state_dict()


def test_two_rounds_keep_only_what_the_judge_passed_and_chain_the_connector(setup, capsys):
    path, tmp = setup
    assert main(["feedback", path]) == 0
    rounds = json.loads((tmp / "run" / "rounds.json").read_text())
    assert [r["kept"] for r in rounds] == [2, 2] and rounds[0]["candidates"] == 6
    assert rounds[1]["connector_in"] == rounds[0]["connector"]  # round 2 starts from round 1's export
    for r in (1, 2):
        kept = [json.loads(line) for line in open(tmp / "run" / f"round-{r:02d}" / "kept.jsonl")]
        assert {k["key"].split("__")[1] for k in kept} == {"0"}  # never a candidate the judge failed
        assert all(k["score"] == 1.0 for k in kept)
    assert rounds[1]["connector"] == os.path.join("round-02", "train", "export")  # relative to the run
    first, second = _weights(tmp / "run" / rounds[0]["connector"]), _weights(tmp / "run" / rounds[1]["connector"])
    assert any(not torch.equal(first[k], second[k]) for k in first)
    out = capsys.readouterr().out
    assert "round 1: kept 2 of 6 candidates" in out and "round 2: kept 2 of 6" in out
    assert rounds[1]["best"] and "best: round 2 (unchecked: no bench_csv)" in out  # no bench: the last round
    best = _weights(tmp / "run" / "best")
    assert all(torch.equal(best[k], second[k]) for k in best)


def test_a_killed_run_resumes_to_the_same_kept_sets_and_connector(setup):
    path, tmp = setup
    config = load_feedback_config(path)
    rounds = run_feedback(config)
    final = _weights(rounds[-1]["connector"])
    kept = (tmp / "run" / "round-01" / "kept.jsonl").read_text()
    import shutil

    shutil.rmtree(tmp / "run" / "round-02")  # killed between rounds
    os.remove(tmp / "run" / "round-01" / "trained.json")  # and inside round 1, after judging, before training ended
    shutil.rmtree(tmp / "run" / "round-01" / "train" / "export")
    os.remove(tmp / "run" / "round-01" / "kept.jsonl")  # ... and before keeping: two candidates to draw again
    for name in ("feedback0__1.png", "feedback1__2.png"):
        os.remove(tmp / "run" / "round-01" / "images" / name)
    again = run_feedback(load_feedback_config(path))
    assert (tmp / "run" / "round-01" / "kept.jsonl").read_text() == kept
    resumed = _weights(again[-1]["connector"])
    assert all(torch.equal(final[k], resumed[k]) for k in final)


def test_a_round_where_nothing_passes_stops_instead_of_training(setup, capsys):
    path, tmp = setup
    from ella.feedback import EXIT_NOTHING_PASSED

    # random tiny images: the exact judge passes none; its own exit code, and best/ is the start
    assert main(["feedback", path, "--judge", "shapes"]) == EXIT_NOTHING_PASSED
    rounds = json.loads((tmp / "run" / "rounds.json").read_text())
    assert len(rounds) == 1 and rounds[0]["kept"] == 0 and "connector" not in rounds[0]
    assert rounds[0]["stopped"] == "nothing passed" and rounds[0]["skipped_no_winner"] == 2
    assert not (tmp / "run" / "round-01" / "train").exists()
    out = capsys.readouterr().out
    assert "round 1: no candidate reached the threshold 1; stopped; best is round 0" in out
    init, best = _weights(tmp / "init"), _weights(tmp / "run" / "best")
    assert all(torch.equal(init[k], best[k]) for k in init)


@pytest.mark.parametrize("override, message", [
    (["--candidates", "0"], "candidates must be at least 1"),
    (["--threshold", "1.5"], "must be in [0, 1]"),
    (["--judge", "oracle"], "unknown VQA backend 'oracle'"),
    (["--prompts", "EMPTY"], "no question text"),
    (["--replay_data", "missing.jsonl"], "replay_data not found: missing.jsonl"),
    (["--init_connector", "missing-connector"], "init_connector not found"),
    (["--method", "ppo"], "method must be one of sft, dpo"),
])
def test_config_errors_are_one_line_before_any_work(setup, capsys, override, message):
    path, tmp = setup
    import csv

    with open(tmp / "prompts.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    rows[0]["question_natural_language"] = ""  # the first prompt's first question, gone
    with open(tmp / "empty.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    override = [a.replace("EMPTY", str(tmp / "empty.csv")) for a in override]
    assert main(["feedback", path, *override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp / "run").exists()


def test_the_starting_connector_is_benched_as_round_zero(setup, capsys):
    path, tmp = setup
    assert main(["feedback", path, "--judge", "shapes", "--bench_csv", str(tmp / "prompts.csv")]) == 3  # none passed
    rounds = json.loads((tmp / "run" / "rounds.json").read_text())
    assert rounds[0]["round"] == 0 and rounds[0]["connector"] == str(tmp / "init")  # outside the run: absolute
    assert 0 <= rounds[0]["bench"]["overall"] <= 100 and rounds[1]["kept"] == 0
    assert "round 0 (the starting connector): held-out score" in capsys.readouterr().out


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 0.8])
def test_replay_mix_keeps_its_share_and_replays_each_original_at_most_once(fraction):
    from ella.train.data import ReplayMix

    primary, replay = [f"new{i}" for i in range(3)], [f"old{i}" for i in range(100)]
    mix = [s for s in ReplayMix(primary, replay, fraction, seed=1)]
    replayed = [s for s in mix if s.startswith("old")]
    assert len(replayed) == len(set(replayed))  # the replay data once over, not a handful repeated
    assert abs(len(replayed) / len(mix) - fraction) < 0.02
    assert {s for s in mix if s.startswith("new")} == set(primary)
    if fraction:
        assert len(replayed) > 50  # most of the original data, not len(primary) samples of it


def _scripted_bench(monkeypatch, scores: list[float]):
    """Each benched round (0, 1, ...) scores the next of `scores`."""
    import ella.feedback as feedback

    given = iter(scores)
    monkeypatch.setattr(feedback, "bench_round", lambda *a: {"overall": next(given)})


def test_the_best_round_is_exported_and_a_worse_round_stops_the_run(setup, monkeypatch, capsys):
    from ella.feedback import EXIT_WORSE

    path, tmp = setup
    _scripted_bench(monkeypatch, [80.0, 85.0, 70.0])
    code = main(["feedback", path, "--rounds", "3", "--bench_csv", str(tmp / "prompts.csv")])
    assert code == EXIT_WORSE
    rounds = json.loads((tmp / "run" / "rounds.json").read_text())
    assert [r["round"] for r in rounds] == [0, 1, 2] and rounds[2]["stopped"] == "worse"  # round 3 never ran
    assert [r["best"] for r in rounds] == [False, True, False]
    out = capsys.readouterr().out
    assert "round 2: 70.00 < round 1: 85.00; stopped; best is round 1" in out
    assert "best: round 1 (held-out 85.00)" in out
    best, first = _weights(tmp / "run" / "best"), _weights(tmp / "run" / rounds[1]["connector"])
    assert all(torch.equal(best[k], first[k]) for k in best)


def test_ties_go_to_the_earlier_round_and_a_small_drop_is_tolerated(setup, monkeypatch, capsys):
    path, tmp = setup
    _scripted_bench(monkeypatch, [80.0, 80.0, 79.5])
    assert main(["feedback", path, "--bench_csv", str(tmp / "prompts.csv"), "--tolerance", "1.0"]) == 0
    rounds = json.loads((tmp / "run" / "rounds.json").read_text())
    assert [r["best"] for r in rounds] == [True, False, False] and "stopped" not in rounds[-1]
    init, best = _weights(tmp / "init"), _weights(tmp / "run" / "best")
    assert all(torch.equal(init[k], best[k]) for k in init)


def test_dpo_loss_equals_a_hand_computation_on_two_pairs():
    import math

    from ella.train.loop import dpo_objective

    win, lose, ref_win, ref_lose, beta = [0.30, 0.50], [0.40, 0.20], [0.35, 0.45], [0.30, 0.25], 10.0
    inside = [-0.5 * beta * ((win[i] - lose[i]) - (ref_win[i] - ref_lose[i])) for i in range(2)]  # -0.75, -1.75
    by_hand = sum(math.log(1 + math.exp(-x)) for x in inside) / 2  # -log sigmoid(x) = log(1 + e^-x)
    got = dpo_objective(*(torch.tensor(x, dtype=torch.float64) for x in (win, lose, ref_win, ref_lose)), beta)
    assert got.item() == pytest.approx(by_hand, rel=1e-12)
    assert dpo_objective(*(torch.tensor([0.3]),) * 4, beta).item() == pytest.approx(math.log(2))  # the start: log 2


def test_a_dpo_round_trains_on_winner_loser_pairs_against_a_frozen_reference(setup, monkeypatch):
    import ella.train.loop as loop

    path, tmp = setup
    runs = []
    real_build = loop.build
    monkeypatch.setattr(loop, "build", lambda *a: runs.append(real_build(*a)) or runs[-1])
    rounds = run_feedback(load_feedback_config(path, {"method": "dpo", "rounds": 1}))
    pairs = [json.loads(line) for line in open(tmp / "run" / "round-01" / "kept.jsonl")]
    assert len(pairs) == 2 and rounds[0]["kept"] == 2
    assert all(p["image"].endswith("__0.png") and p["loser"].endswith("__1.png") for p in pairs)  # worst: lowest k
    assert all(p["score"] == 1.0 and p["loser_score"] == 0.0 for p in pairs)
    init = _weights(tmp / "init")
    reference = runs[0].reference.ella.state_dict()
    assert all(torch.equal(init[k], reference[k]) for k in init)  # the reference never moved
    trained = _weights(rounds[0]["connector"])
    assert any(not torch.equal(init[k], trained[k]) for k in init)
    assert runs[0].config.objective == "dpo" and runs[0].config.replay_data is None  # DPO trains on its pairs alone


def test_a_prompt_without_a_winner_or_a_loser_is_skipped_and_counted(tmp_path):
    from ella.bench.dpg import Item
    from ella.feedback import FeedbackConfig, keep

    items = {"a": Item("a", "x"), "b": Item("b", "y"), "c": Item("c", "z")}
    scores = {"a__0": 1.0, "a__1": 0.5, "b__0": 1.0, "b__1": 1.0, "c__0": 0.2, "c__1": 0.1}
    (tmp_path / "images").mkdir()
    for name in scores:
        (tmp_path / "images" / f"{name}.png").write_bytes(b"png")
    kept = keep(FeedbackConfig(method="dpo", candidates=2), items, scores, str(tmp_path))
    assert [(k["image"], k["loser"]) for k in kept] == [("a__0.png", "a__1.png")]
    assert json.loads((tmp_path / "keep.json").read_text()) == {"skipped_no_winner": 1, "skipped_no_loser": 1}


def test_dpo_pairs_by_margin_take_the_best_and_the_worst_when_they_differ_enough(tmp_path):
    from ella.bench.dpg import Item
    from ella.feedback import FeedbackConfig, keep

    items = {"a": Item("a", "x"), "b": Item("b", "y")}
    scores = {"a__0": 0.5, "a__1": 0.9, "a__2": 0.2, "b__0": 0.5, "b__1": 0.6, "b__2": 0.55}
    (tmp_path / "images").mkdir()
    for name in scores:
        (tmp_path / "images" / f"{name}.png").write_bytes(b"png")
    kept = keep(FeedbackConfig(method="dpo", candidates=3, dpo_margin=0.3), items, scores, str(tmp_path))
    assert [(k["image"], k["loser"]) for k in kept] == [("a__1.png", "a__2.png")]  # none passed 1.0: margins decide
    assert json.loads((tmp_path / "keep.json").read_text())["skipped_no_winner"] == 1  # b: 0.1 apart


def test_the_strict_judge_fails_one_extra_object_and_passes_the_exact_scene():
    import random

    from ella.bench.dpg import Item, Question
    from ella.shapes.judge import ShapesBackend
    from ella.shapes.world import Obj, Scene, render, sample_scene

    scene = sample_scene(random.Random(3), max_objects=2)
    from ella.shapes.world import questions

    rows = questions(scene, "s", "prompt", [])
    item = Item("s", "prompt", [Question(str(r["proposition_id"]), [], r["tuple"], r["question_natural_language"], 0)
                                for r in rows])
    judge = ShapesBackend()
    assert judge.scene_problems(render(scene), item) == []
    free = next(c for c in range(9) if c not in {o.cell for o in scene.objects})
    extra = Scene((*scene.objects, Obj("circle", "red", "large", free)), scene.background)
    problems = judge.scene_problems(render(extra), item)
    assert len(problems) == 1 and "red circle" in problems[0]
    asked = [q.question for q in item.questions if q.l1 in ("entity", "attribute")]
    assert all(a == "yes" for a in judge.answer(render(extra), asked, item_id="s", crop=0))  # only strict sees it


def test_strict_questions_for_vqa_judges_ask_for_counts_and_nothing_else():
    from ella.bench.dpg import Item, Question, strict_questions

    item = Item("i", "a cat and two dogs", [Question("1", [], "entity - whole (cat)", "Is there a cat?", 1),
                                            Question("2", [], "entity - whole (dogs)", "Are there dogs?", 2),
                                            Question("3", ["2"], "other - count (dogs, ==2)", "Are there two dogs?", 3)])
    asked = strict_questions(item)
    assert [q.question for q in asked] == ["Is there exactly one cat?",
                                           "Does the image show only cat and dogs, and nothing else?"]
    assert [q.proposition_id for q in asked] == ["4", "5"] and asked[1].parents == ["1", "2"]


def test_a_rerun_with_other_settings_is_refused_or_started_fresh(setup, capsys):
    path, tmp = setup
    assert main(["feedback", path, "--rounds", "1"]) == 0
    capsys.readouterr()
    assert main(["feedback", path, "--rounds", "1", "--threshold", "0.5", "--candidates", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "threshold 1.0 -> 0.5" in err[0] and "candidates 3 -> 2" in err[0] and "--fresh" in err[0]
    assert main(["feedback", path, "--rounds", "2"]) == 0  # more rounds continue the same run
    assert main(["feedback", path, "--rounds", "1", "--threshold", "0.5", "--fresh"]) == 0
    assert (tmp / "run.old-1" / "round-02").is_dir()  # the old run moved aside, not deleted
    assert json.loads((tmp / "run" / "run.json").read_text())["threshold"] == 0.5


def test_a_copied_run_folder_points_at_its_own_rounds(setup):
    import shutil

    path, tmp = setup
    run_feedback(load_feedback_config(path, {"rounds": 1}))
    shutil.copytree(tmp / "run", tmp / "copy")
    shutil.rmtree(tmp / "run")
    again = run_feedback(load_feedback_config(path, {"rounds": 1, "output_dir": str(tmp / "copy")}))
    assert again[0]["connector"].startswith(str(tmp / "copy"))  # nothing redone, nothing read from the original
    assert json.loads((tmp / "copy" / "rounds.json").read_text())[0]["connector"] == "round-01/train/export"


KILL_AT_STEP_3 = """
import os, signal, sys
import torch
torch.set_num_threads(int(sys.argv.pop(1)))  # the test's: a thread count can change float rounding
import ella.train.loop as loop
real = loop.train_step
def step(run, *a):
    loss = real(run, *a)
    if run.result.step == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return loss
loop.train_step = step
from ella.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_kill_9_inside_a_dpo_round_and_rerun_gives_the_same_connector(setup):
    import subprocess
    import sys

    path, tmp = setup
    overrides = {"method": "dpo", "rounds": 1, "steps_per_round": 5,
                 "train_overrides": {"batch_size": 2, "ema_decay": 0.0, "warmup_steps": 1, "checkpoint_every": 2}}
    straight = run_feedback(load_feedback_config(path, {**overrides, "output_dir": str(tmp / "straight")}))
    args = ["feedback", path, "--method", "dpo", "--rounds", "1", "--steps_per_round", "5", "--train_overrides",
            json.dumps(overrides["train_overrides"]), "--output_dir", str(tmp / "killed")]
    killed = subprocess.run([sys.executable, "-c", KILL_AT_STEP_3, str(torch.get_num_threads()), *args],
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (tmp / "killed" / "round-01" / "trained.json").exists()
    assert main(args) == 0
    a, b = _weights(straight[0]["connector"]), _weights(tmp / "killed" / "round-01" / "train" / "export")
    assert max((a[k] - b[k]).abs().max().item() for k in a) == 0


def test_a_hub_connector_is_not_taken_for_a_missing_path(setup):
    path, tmp = setup
    config = load_feedback_config(path, {"init_connector": "QQGYLab/ELLA"}).validate()  # loads later, from the hub
    assert config.record("QQGYLab/ELLA") == "QQGYLab/ELLA" and config.settings()["init_connector"] == "QQGYLab/ELLA"
    with pytest.raises(FileNotFoundError, match="init_connector not found"):
        load_feedback_config(path, {"init_connector": str(tmp / "no-such" / "export")}).validate()
