import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from ella.bench.dpg import DPGDataError, check_integrity, load_csv, load_prompt_folder, summarize
from ella.bench.runner import score_run
from ella.bench.vqa import VQABackend, get_backend
from ella.cli import main

HEADER = ["item_id", "text", "keywords", "proposition_id", "dependency", "category_broad", "category_detailed",
          "tuple", "question_natural_language"]
# p1 holds the file's first rows: a chain three deep (1 -> 3 -> 4) and a two-parent relation (5).
ROWS = [
    ("p1", "1", "0", "entity - whole (cat)", "Is there a cat?"),
    ("p1", "2", "0", "entity - whole (dog)", "Is there a dog?"),
    ("p1", "3", "1", "attribute - color (cat, black)", "Is the cat black?"),
    ("p1", "4", "3", "attribute - size (cat, small)", "Is the black cat small?"),
    ("p1", "5", "1,2", "relation - spatial (cat, dog, next to)", "Is the cat next to the dog?"),
    ("p2", "1", "0", "global - (sunny)", "Is it sunny?"),
    ("p2", "2", "0", "other - count (apple, ==2)", "Are there two apples?"),
    ("p2", "3", "0", "entity - whole (apple)", "Is there an apple?"),
]
# Answers per crop (top-left, top-right, bottom-left, bottom-right); default "yes".
P1 = [{}, {"1": "no"}, {"2": "No"}, {"3": "Yes"}]
P2 = [{"2": "no"}] * 4


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        for item, pid, dep, tup, q in rows:
            w.writerow([item, f"prompt of {item}", "", pid, dep, tup.split(" -")[0], tup.split(" (")[0], tup, q])


class FakeVQA(VQABackend):
    """Answers from the tables above; counts calls; can die after `die_after` questions."""

    name = "fake"

    def __init__(self, items, die_after=None):
        self.items, self.asked, self.die_after = items, 0, die_after

    def answer(self, image, questions, *, item_id, crop):
        table = {"p1": P1, "p2": P2}.get(item_id, [{}] * 4)[crop]
        by_q = {q.question: q.proposition_id for q in self.items[item_id].questions}
        out = []
        for q in questions:
            if self.die_after is not None and self.asked >= self.die_after:
                raise KeyboardInterrupt
            self.asked += 1
            out.append(table.get(by_q[q], "yes"))
        return out


@pytest.fixture
def bench(tmp_path):
    csv_path = tmp_path / "dpg.csv"
    write_csv(csv_path, ROWS + [("p3", "1", "0", "entity - whole (x)", "Is there x?"),
                                ("p4", "1", "0", "entity - whole (y)", "Is there y?"),
                                ("p5", "1", "0", "entity - whole (z)", "Is there z?")])
    images = tmp_path / "images"
    images.mkdir()
    for item in ("p1", "p2"):
        Image.new("RGB", (64, 64), "gray").save(images / f"{item}.png")
    # p3: no image; p4: corrupt; p5: not a square 2x2 grid
    (images / "p4.png").write_bytes(b"not a png")
    Image.new("RGB", (30, 20)).save(images / "p5.png")
    return csv_path, images


def test_corrected_scores_by_hand(bench, tmp_path):
    csv_path, images = bench
    items = load_csv(str(csv_path))
    summary = score_run(items, str(images), FakeVQA(items), str(tmp_path / "out"), skip_missing=True)
    # p1 crops: all yes 1.0; cat=no cascades to 3, 4 and 5: 1/5; dog="No" zeroes 5: 3/5;
    # "Yes" counts as yes in corrected mode: 1.0.  p2: 2/3 on every crop.
    p1, p2 = (1 + 0.2 + 0.6 + 1.0) / 4, 2 / 3
    assert summary["overall"] == pytest.approx(100 * (p1 + p2) / 2)
    assert summary["n_items"] == 2 and summary["n_failed"] == 3
    assert set(summary["failures"]) == {"p3", "p4", "p5"}
    assert "missing" in summary["failures"]["p3"] and "unreadable" in summary["failures"]["p4"]
    assert "wrong size" in summary["failures"]["p5"]
    l1 = summary["l1"]
    assert l1["entity"] == pytest.approx(100 * 10 / 12)  # cat 3/4, dog 3/4, apple 4/4
    assert l1["attribute"] == pytest.approx(75.0)
    assert l1["relation"] == pytest.approx(50.0)
    assert l1["global"] == pytest.approx(100.0) and l1["other"] == pytest.approx(0.0)
    assert summary["l2"]["global -"] == pytest.approx(100.0)
    assert not any(n.endswith((".json", ".jsonl", ".md")) for n in os.listdir(images))  # image folder untouched
    counted = score_run(items, str(images), FakeVQA(items), str(tmp_path / "out2"))
    assert counted["overall"] == pytest.approx(100 * (p1 + p2) / 5)  # failures score 0 by default


def test_reference_mode_reproduces_the_defects(bench, tmp_path):
    csv_path, images = bench
    items = load_csv(str(csv_path))
    summary = score_run(items, str(images), FakeVQA(items), str(tmp_path / "out"), mode="reference")
    # The first CSV row (p1's proposition 1) is skipped: p1's children lose their parent and p1
    # is dropped; failed images are dropped silently; only p2 remains.
    assert summary["overall"] == pytest.approx(100 * 2 / 3)
    assert summary["n_items"] == 1
    # Categories: last crop, raw answers: p2 only.
    assert summary["l1"] == pytest.approx({"global": 100.0, "other": 0.0, "entity": 100.0})


def test_reference_counts_only_exact_yes(tmp_path):
    # A first item that the reference skips, so q keeps both of its rows.
    write_csv(tmp_path / "x.csv", [("first", "1", "0", "entity - whole (z)", "z?"),
                                   ("q", "1", "0", "entity - whole (a)", "a?"), ("q", "2", "0", "entity - whole (b)", "b?")])
    items = load_csv(str(tmp_path / "x.csv"))
    items.pop("first")
    ans = {"q": [{"1": "Yes", "2": "yes"}] * 4}
    corrected, _ = summarize(items, ans, "corrected")
    assert corrected["overall"] == pytest.approx(100.0)
    reference, _ = summarize(items, ans, "reference")
    assert reference["overall"] == pytest.approx(50.0)


def test_items_group_by_id_not_by_adjacency(tmp_path):
    rows = [ROWS[0], ROWS[5], ROWS[1]]  # p1, p2, p1 again
    write_csv(tmp_path / "x.csv", rows)
    items = load_csv(str(tmp_path / "x.csv"))
    assert [q.proposition_id for q in items["p1"].questions] == ["1", "2"]
    assert items["p2"].questions[0].l2 == "global -" and items["p2"].questions[0].l1 == "global"


@pytest.mark.parametrize(
    "rows, message",
    [
        ([("a", "1", "0", "entity - whole (x)", "x?"), ("a", "2", "7", "attribute - color (x, red)", "red?")],
         "item a, row 2: unknown parent proposition 7"),
        ([("a", "1", "2", "entity - whole (x)", "x?"), ("a", "2", "1", "entity - whole (y)", "y?")],
         "item a, row 1: dependency cycle"),
    ],
)
def test_integrity_errors_name_item_and_row(tmp_path, capsys, rows, message):
    write_csv(tmp_path / "bad.csv", rows)
    problems = check_integrity(load_csv(str(tmp_path / "bad.csv")))
    assert any(message in p for p in problems)
    (tmp_path / "imgs").mkdir()
    code = main(["bench", "dpg", "score", "--images", str(tmp_path / "imgs"), "--csv", str(tmp_path / "bad.csv"),
                 "--vqa", "shapes", "--out", str(tmp_path / "o")])
    assert code == 2
    assert "item a, row" in capsys.readouterr().err


def test_killed_score_resumes_without_duplicates(bench, tmp_path):
    csv_path, images = bench
    items = load_csv(str(csv_path))
    straight = score_run(items, str(images), FakeVQA(items), str(tmp_path / "a"))
    with pytest.raises(KeyboardInterrupt):
        score_run(items, str(images), FakeVQA(items, die_after=11), str(tmp_path / "b"))
    kept = len((tmp_path / "b" / "answers.jsonl").read_text().splitlines())
    assert kept == 10  # the two crops answered before the kill
    with open(tmp_path / "b" / "answers.jsonl", "a") as f:
        f.write('{"item_id": "p1", "cro')  # a torn line from the kill
    resumed_backend = FakeVQA(items)
    resumed = score_run(items, str(images), resumed_backend, str(tmp_path / "b"))
    assert resumed_backend.asked == 8 * 4 - kept  # only what was not answered before
    assert {k: v for k, v in resumed.items() if k != "settings"} == {k: v for k, v in straight.items() if k != "settings"}
    lines = (tmp_path / "b" / "answers.jsonl").read_text().splitlines()
    keys = [(r["item_id"], r["crop"], r["proposition_id"]) for r in map(json.loads, lines)]
    assert len(keys) == len(set(keys)) == 32


def test_replay_backend_and_unknown_backend(bench, tmp_path):
    csv_path, images = bench
    items = load_csv(str(csv_path))
    first = score_run(items, str(images), FakeVQA(items), str(tmp_path / "a"))
    again = score_run(items, str(images), get_backend(f"replay:{tmp_path / 'a' / 'answers.jsonl'}"), str(tmp_path / "b"))
    assert again["overall"] == first["overall"] and again["l2"] == first["l2"]
    with pytest.raises(ValueError, match="unknown VQA backend"):
        get_backend("gpt")


def test_output_folder_must_differ_from_images(bench):
    csv_path, images = bench
    items = load_csv(str(csv_path))
    with pytest.raises(ValueError, match="differ"):
        score_run(items, str(images), FakeVQA(items), str(images))


def test_compare_prints_deltas(bench, tmp_path, capsys):
    csv_path, images = bench
    items = load_csv(str(csv_path))
    score_run(items, str(images), FakeVQA(items), str(tmp_path / "a"))
    score_run(items, str(images), FakeVQA(items), str(tmp_path / "b"), mode="reference")
    assert main(["bench", "dpg", "compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "| a |" in out and "| b |" in out and "deltas against a" in out


SHARED_PROMPTS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "dpg_bench", "prompts")


@pytest.mark.skipif(not os.path.isdir(SHARED_PROMPTS), reason="shared/dpg_bench is not beside the checkout")
def test_reads_all_1065_shared_prompts():
    prompts = load_prompt_folder(SHARED_PROMPTS)
    assert len(prompts) == 1065
    assert all(p and p == p.strip() for p in prompts.values())
    assert "partiprompts97" in prompts and "countbench4" in prompts


def test_prompt_folder_without_prompts_or_with_an_empty_one_is_refused(tmp_path):
    with pytest.raises(DPGDataError, match="no <item_id>.txt prompt files"):
        load_prompt_folder(str(tmp_path))
    (tmp_path / "a.txt").write_text("a red cube\n")
    (tmp_path / "b.txt").write_text("  \n")
    with pytest.raises(DPGDataError, match="1 empty prompt file.*b.txt"):
        load_prompt_folder(str(tmp_path))


def test_generate_then_score_then_replay_end_to_end(tmp_path, capsys):
    """The real entry points on tiny random components: generate, score, re-score by replay."""
    from ella import ELLAStableDiffusionPipeline
    from ella.testing import tiny_components

    model = tmp_path / "model"
    ELLAStableDiffusionPipeline(**tiny_components(), text_mode="flexible").save_pretrained(model)
    write_csv(tmp_path / "q.csv", ROWS)
    images = tmp_path / "images"
    args = ["bench", "dpg", "generate", "--out", str(images), "--csv", str(tmp_path / "q.csv"), "--model", str(model),
            "--steps", "2", "--seed", "3", "--device", "cpu"]
    assert main(args) == 0
    assert sorted(f for f in os.listdir(images) if not f.startswith(".")) == ["manifest.json", "p1.png", "p2.png"]
    assert Image.open(images / "p1.png").size == (32, 32)  # 2x2 tiles of 16 px
    manifest = json.loads((images / "manifest.json").read_text())
    assert manifest["seed"] == 3 and manifest["steps"] == 2 and manifest["samples"] == 4
    assert manifest["llm"].endswith("text_encoder")  # the LLM actually loaded: the saved pipeline's own
    # Regenerating one item alone gives the same image (seeds depend on item and sample only), up
    # to float rounding: alone it runs in a smaller, unpadded batch. Another seed moves pixels by up to ~190.
    before = np.asarray(Image.open(images / "p2.png"), dtype=int)
    (images / "p2.png").unlink()
    assert main(args) == 0
    assert np.abs(np.asarray(Image.open(images / "p2.png"), dtype=int) - before).max() <= 2
    # ... but never with other settings: p2 would then be scored beside a p1 made otherwise
    (images / "p2.png").unlink()
    capsys.readouterr()
    assert main(args[:-6] + ["--steps", "3", "--seed", "3", "--device", "cpu"]) == 2
    assert "holds images made with other settings (steps: 2 there, 3 now)" in capsys.readouterr().err
    assert not (images / "p2.png").exists()
    assert main(args) == 0

    items = load_csv(str(tmp_path / "q.csv"))
    first = score_run(items, str(images), FakeVQA(items), str(tmp_path / "s1"))
    capsys.readouterr()
    assert main(["bench", "dpg", "score", "--images", str(images), "--csv", str(tmp_path / "q.csv"),
                 "--vqa", f"replay:{tmp_path / 's1' / 'answers.jsonl'}", "--out", str(tmp_path / "s2")]) == 0
    second = json.loads((tmp_path / "s2" / "summary.json").read_text())
    for key in ("overall", "l1", "l2", "n_items", "n_failed"):
        assert second[key] == first[key]
    assert (tmp_path / "s2" / "summary.md").is_file() and (tmp_path / "s2" / "l1.png").is_file()


def test_sharded_scoring_merges_to_the_single_process_summary(bench, tmp_path):
    csv_path, images = bench
    items = load_csv(str(csv_path))
    single = score_run(items, str(images), FakeVQA(items), str(tmp_path / "one"))
    # Two processes, run one after the other (the barrier is then a no-op): rank 1 first.
    assert score_run(items, str(images), FakeVQA(items), str(tmp_path / "two"), rank=1, world=2) is None
    merged = score_run(items, str(images), FakeVQA(items), str(tmp_path / "two"), rank=0, world=2)
    for key in ("overall", "l1", "l2", "n_items", "n_failed", "failures"):
        assert merged[key] == single[key]
    assert not [n for n in os.listdir(tmp_path / "two") if ".rank" in n]  # parts merged and removed
