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
    first, second = _weights(rounds[0]["connector"]), _weights(rounds[1]["connector"])
    assert any(not torch.equal(first[k], second[k]) for k in first)
    out = capsys.readouterr().out
    assert "round 1: kept 2 of 6 candidates" in out and "round 2: kept 2 of 6" in out


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
    assert main(["feedback", path, "--judge", "shapes"]) == 0  # random tiny images: the exact judge passes none
    rounds = json.loads((tmp / "run" / "rounds.json").read_text())
    assert len(rounds) == 1 and rounds[0]["kept"] == 0 and "connector" not in rounds[0]
    assert not (tmp / "run" / "round-01" / "train").exists()
    assert "stopped: nothing passed" in capsys.readouterr().out


@pytest.mark.parametrize("override, message", [
    (["--candidates", "0"], "candidates must be at least 1"),
    (["--threshold", "1.5"], "must be in [0, 1]"),
    (["--judge", "oracle"], "unknown VQA backend 'oracle'"),
    (["--prompts", "EMPTY"], "no question text"),
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
    assert main(["feedback", path, "--judge", "shapes", "--bench_csv", str(tmp / "prompts.csv")]) == 0
    rounds = json.loads((tmp / "run" / "rounds.json").read_text())
    assert rounds[0]["round"] == 0 and rounds[0]["connector"] == str(tmp / "init")
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
