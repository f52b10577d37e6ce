"""`ella study`: blind pairwise votes in a real database, the page in a real browser, 50 raters at
once through its HTTP API, a server killed mid-vote, and the statistics on simulated votes."""

import json
import math
import os
import random
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from ella.cli import main
from ella.study.runs import load_study
from ella.study.stats import bootstrap, bradley_terry
from ella.study.store import VoteError, VoteStore

MODELS = ("base", "tsc-dense", "tsc")


@pytest.fixture
def runs(tmp_path):
    """Three image folders as `ella bench` writes them (manifest + <item_id>.png), and their prompts."""
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    for i in range(6):
        (prompts / f"item{i}.txt").write_text(f"a red circle number {i}\n")
    folders = []
    for m, model in enumerate(MODELS):
        folder = tmp_path / "runs" / model
        folder.mkdir(parents=True)
        (folder / "manifest.json").write_text(json.dumps({"model": model, "steps": 25}))
        for i in range(6):  # each model's images are its own colour: the side shown can be told apart
            Image.new("RGB", (32, 32), (80 * m, 40 * i, 200 - 60 * m)).save(folder / f"item{i}.png")
        folders.append(str(folder))
    return folders, str(prompts)


def _server(runs, tmp_path, seed=0):
    from ella.study.app import StudyServer

    folders, prompts = runs
    return StudyServer(load_study(folders, prompt_folder=prompts), VoteStore(f"sqlite:///{tmp_path}/votes.db"), seed)


def _models(server, pair: dict) -> tuple[str, str]:
    """The models behind a pair (the API does not say: the store knows)."""
    row = server.store.shown_pair(pair["shown_id"])
    return row["left_model"], row["right_model"]


def test_votes_keep_the_model_on_each_side_and_every_pair_gets_votes(runs, tmp_path):
    server = _server(runs, tmp_path)
    seen = {}
    for rater in ("r1", "r2", "r3"):
        while not (pair := server.next_pair(rater)).get("done"):
            key = (pair["prompt"], frozenset((pair["left"], pair["right"])))
            assert key not in seen.setdefault(rater, set())  # never the same pair twice to one rater
            seen[rater].add(key)
            server.vote(pair["shown_id"], rater, "left", "right")
    votes = server.store.all_votes()
    assert len(votes) == 3 * 3 * 6  # every rater saw every (prompt, model pair) once
    for v in votes:
        assert os.path.dirname(v["left_file"]).endswith(v["left_model"]) and v["alignment"] == "left"
        assert v["prompt"] == server.study.prompts[v["item_id"]]
        with open(v["left_file"], "rb") as f:
            import hashlib

            assert hashlib.sha256(f.read()).hexdigest() == v["left_sha256"]
    assert sorted(server.store.counts().values()) == [18, 18, 18]


def test_the_first_votes_spread_over_every_model_pair_and_prompt(runs, tmp_path):
    server = _server(runs, tmp_path)
    shown = [server.next_pair(f"rater{i}") for i in range(6)]
    for i, pair in enumerate(shown):
        server.vote(pair["shown_id"], f"rater{i}", "tie", "tie")
    pairs = {frozenset(_models(server, p)) for p in shown}
    assert len(pairs) == 3  # six votes: every model pair has two, not the first pair six
    assert len({p["prompt"] for p in shown}) >= 3


def test_bad_input_is_refused_and_nothing_is_half_written(runs, tmp_path, capsys):
    folders, prompts = runs
    os.remove(os.path.join(folders[1], "item3.png"))
    study_dir = tmp_path / "study"
    assert main(["study", "report", "--study", str(study_dir)]) == 2
    with pytest.raises(ValueError, match="do not hold the same prompts .*item3"):
        load_study(folders, prompt_folder=prompts)
    assert not study_dir.exists()
    with pytest.raises(ValueError, match="cannot open the vote database"):
        VoteStore("postgresql+nosuchdriver://nobody@127.0.0.1/votes")
    with pytest.raises(ValueError, match="cannot open the vote database"):
        VoteStore(f"sqlite:///{tmp_path}/no/such/folder/votes.db")
    store = VoteStore(f"sqlite:///{tmp_path}/votes.db")
    with pytest.raises(VoteError, match="was shown to this rater"):
        store.vote("never-shown", "r1", "left", "left")
    shown = store.show("r1", "item0", "a prompt", ("base", "a.png", "0"), ("tsc", "b.png", "1"))
    with pytest.raises(VoteError, match="was shown to this rater"):
        store.vote(shown, "someone-else", "left", "left")
    with pytest.raises(VoteError, match="answers must be one of"):
        store.vote(shown, "r1", "sideways", "left")
    store.vote(shown, "r1", "left", "left")
    with pytest.raises(VoteError, match="has a vote already"):
        store.vote(shown, "r1", "right", "right")
    assert [v["alignment"] for v in store.all_votes()] == ["left"]


def _simulate(truth: dict, n: int, rng: random.Random):
    models, rows = list(truth), []
    for _ in range(n):
        a, b = rng.sample(models, 2)
        p = 1 / (1 + math.exp(-(truth[a] - truth[b])))
        rows.append((a, b, 1.0 if rng.random() < p else 0.0))
    return rows


def test_bradley_terry_recovers_known_strengths_and_its_intervals_cover_them():
    truth = {"a": -0.8, "b": 0.0, "c": 0.3, "d": 0.5}
    rng, covered, total, ordered = random.Random(0), 0, 0, 0
    for trial in range(20):
        rows = _simulate(truth, 400, rng)
        fit = bradley_terry(rows, list(truth))
        ordered += sorted(fit, key=fit.get) == ["a", "b", "c", "d"]
        intervals = bootstrap(rows, list(truth), rounds=60, seed=trial)
        centre = sum(truth.values()) / len(truth)
        for m, (lo, hi) in intervals.items():
            covered += lo <= truth[m] - centre <= hi
            total += 1
    assert 0.85 <= covered / total <= 1.0  # about the nominal 95 %
    assert ordered >= 15  # the true order, in most trials (c and d are only 0.2 apart)


def test_the_report_command_writes_tables_plot_and_raw_votes(runs, tmp_path, capsys):
    folders, prompts = runs
    study_dir = tmp_path / "study"
    from ella.study.cli import open_study

    class Args:
        study, runs, csv, db = str(study_dir), folders, None, None
    Args.prompts = prompts
    study, store = open_study(Args, create=True)
    from ella.study.app import StudyServer

    server = StudyServer(study, store, seed=1)
    strength = {"base": 0, "tsc-dense": 1, "tsc": 2}
    for rater in ("a", "b"):
        while not (pair := server.next_pair(rater)).get("done"):
            left, right = _models(server, pair)
            better = "left" if strength[left] > strength[right] else "right"
            server.vote(pair["shown_id"], rater, better, better)
    assert main(["study", "report", "--study", str(study_dir), "--rounds", "20"]) == 0
    result = json.loads((study_dir / "report.json").read_text())
    bt = result["alignment"]["bradley_terry"]
    assert bt["base"]["strength"] < bt["tsc-dense"]["strength"] < bt["tsc"]["strength"]
    assert (study_dir / "strengths.png").stat().st_size > 1000
    with open(study_dir / "votes.csv") as f:
        assert len(f.readlines()) == 1 + 36


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(tmp_path, runs, study: str = "study", env: dict | None = None, started=None) -> tuple[subprocess.Popen, int]:
    folders, prompts = runs
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "ella.cli", "study", "serve", *folders, "--prompts", prompts,
                                "--study", str(tmp_path / study), "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, **(env or {})})
    if started is not None:  # the caller waits (several servers starting at the same moment)
        return process, port
    return _wait_for(process, port)


def _wait_for(process, port: int) -> tuple[subprocess.Popen, int]:
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process, port
        except OSError:
            if process.poll() is not None:
                raise AssertionError(process.stdout.read()) from None
            time.sleep(0.5)
    process.kill()
    raise AssertionError("the study server did not start")


def _client(url: str):
    """A loopback client whose requests wait as long as a busy machine needs (gradio_client's own
    limit is 20 s: fifty raters beside two training processes on 2 cores have taken longer)."""
    from gradio_client import Client

    return Client(url, verbose=False, httpx_kwargs={"timeout": 240})


def _rater(url: str, name: str, votes: int, stored: list, errors: list, shown: list | None = None) -> None:
    try:
        client = _client(url)
        for _ in range(votes):
            pair = client.predict(name, api_name="/next_pair")
            if shown is not None:
                shown.append(pair)
            if pair.get("done"):
                return
            client.predict(pair["shown_id"], name, "left", "tie", api_name="/vote")
            stored.append(pair["shown_id"])  # only once the server answered: committed
    except Exception as err:  # noqa: BLE001 (a killed server: the rater stops, its error is counted)
        errors.append(repr(err))


def test_fifty_raters_at_once_then_a_server_killed_mid_vote(runs, tmp_path):
    pytest.importorskip("gradio_client")
    process, port = _serve(tmp_path, runs)
    url = f"http://127.0.0.1:{port}/"
    try:
        stored, errors = [], []
        threads = [threading.Thread(target=_rater, args=(url, f"rater{i}", 2, stored, errors)) for i in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert not errors and len(stored) == 100
        db = tmp_path / "study" / "votes.db"
        rows = sqlite3.connect(db).execute("SELECT shown_id FROM votes").fetchall()
        assert sorted(r[0] for r in rows) == sorted(stored)  # every vote stored, once
        client = _client(url)
        pair = client.predict("spy", api_name="/next_pair")
        assert not any(m in json.dumps(pair) for m in MODELS)  # blind through the API too
        with pytest.raises(Exception, match="was shown to this rater"):  # the reason reaches the client
            client.predict(pair["shown_id"], "rater0", "left", "tie", api_name="/vote")
        other = _client(url)  # another session, with the shown id and the rater's name
        with pytest.raises(Exception, match="shown in another session"):
            other.predict(pair["shown_id"], "spy", "left", "tie", api_name="/vote")
        more, errors = [], []
        threads = [threading.Thread(target=_rater, args=(url, f"late{i}", 3, more, errors)) for i in range(10)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        process.kill()  # mid-vote: SIGKILL, no clean shutdown
        for t in threads:
            t.join(timeout=60)
        connection = sqlite3.connect(db)
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        kept = {r[0] for r in connection.execute("SELECT shown_id FROM votes")}
        assert set(stored) | set(more) <= kept  # every vote the server confirmed survived the kill
    finally:
        process.kill()


def test_the_page_in_a_real_browser(runs, tmp_path):
    from test_demo import _browser

    browser, why = _browser()
    if browser is None:
        pytest.skip(why)
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    process, port = _serve(tmp_path, runs)
    try:
        browser.get(f"http://127.0.0.1:{port}")
        wait = WebDriverWait(browser, 120)
        wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#prompt textarea").get_attribute("value"))
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#left img"))
        left_src = browser.find_element(By.CSS_SELECTOR, "#left img").get_attribute("src")
        browser.find_element(By.XPATH, "//*[@id='alignment']//input[@value='left']").click()
        browser.find_element(By.XPATH, "//*[@id='aesthetics']//input[@value='right']").click()
        browser.find_element(By.ID, "vote").click()
        wait.until(lambda b: "Stored" in b.find_element(By.ID, "status").text)
        screenshot = os.environ.get("ELLA_STUDY_SCREENSHOT", str(tmp_path / "study.png"))
        browser.save_screenshot(screenshot)
        vote = sqlite3.connect(tmp_path / "study" / "votes.db").execute(
            "SELECT left_model, left_file, alignment, aesthetics FROM votes").fetchall()
        assert len(vote) == 1 and vote[0][2:] == ("left", "right")
        import urllib.request

        shown = np.asarray(Image.open(urllib.request.urlopen(left_src)).convert("RGB"))
        assert np.array_equal(shown, np.asarray(Image.open(vote[0][1]).convert("RGB")))  # the left model's image
    finally:
        browser.quit()
        process.kill()


@pytest.mark.slow
def test_a_simulated_shapesworld_study_ranks_the_models_as_the_bench_does(tmp_path):
    """Raters who prefer the image where the exact judge finds more of the prompt rank base <
    tsc-dense < tsc (scripts/shapes_study_simulated.py; docs/study.md has a 30-prompt run)."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
    from shapes_study_simulated import simulate

    bt = simulate(str(tmp_path), prompts=30, raters=4)["alignment"]["bradley_terry"]
    assert bt["base"]["strength"] < bt["tsc-dense"]["strength"] < bt["tsc"]["strength"]


# ---- a study with twenty people on a LAN -----------------------------------------------------


def test_the_api_is_blind_and_a_pair_belongs_to_the_session_shown_it(runs, tmp_path):
    server = _server(runs, tmp_path)
    pair = server.next_pair("r1", "session-a")
    for side in ("left", "right"):
        assert not any(m in pair[side] for m in MODELS)  # a copy named by its digest: no model folder in it
        assert os.path.basename(pair[side]) == f"{server.digest(server.store.shown_pair(pair['shown_id'])[f'{side}_file'])}.png"
    with pytest.raises(VoteError, match="shown in another session"):
        server.vote(pair["shown_id"], "r1", "left", "left", "session-b")
    again = server.next_pair("r1", "session-b")  # a reload: the unanswered pair comes back, now in this session
    assert again["shown_id"] == pair["shown_id"]
    with pytest.raises(VoteError, match="shown in another session"):
        server.vote(pair["shown_id"], "r1", "left", "left", "session-a")
    server.vote(pair["shown_id"], "r1", "left", "left", "session-b")
    assert server.next_pair("r1", "session-b")["shown_id"] != pair["shown_id"]


@pytest.mark.parametrize("rater", [None, "", "x" * 65, "a b", "x" * 20_000_000])
def test_rater_ids_are_checked_and_bounded(runs, tmp_path, rater):
    server = _server(runs, tmp_path)
    with pytest.raises(VoteError, match="a rater id is 1-64 letters"):
        server.next_pair(rater)
    assert os.path.getsize(tmp_path / "votes.db") < 1_000_000


def test_bradley_terry_converges_on_lopsided_votes():
    """Two models: the fit has a closed form, log(wins_a / wins_b) with the prior's half-ties."""
    for a_wins, b_wins in ((200, 0), (190, 10)):
        rows = [("a", "b", 1.0)] * a_wins + [("a", "b", 0.0)] * b_wins
        fit = bradley_terry(rows, ["a", "b"])
        assert fit["a"] - fit["b"] == pytest.approx(math.log((a_wins + 0.25) / (b_wins + 0.25)), abs=1e-8)
    truth = {"a": -0.8, "b": 0.0, "c": 0.3}
    rows = _simulate(truth, 300, random.Random(1)) + [("c", "a", 1.0)] * 200  # lopsided, three models
    fit, tighter = bradley_terry(rows, list(truth)), bradley_terry(rows, list(truth), tolerance=1e-14)
    assert all(abs(fit[m] - tighter[m]) < 1e-8 for m in truth)


def test_the_port_is_free_again_at_once_after_a_server_stops():
    from ella.demo import port_free

    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    accepted.close()  # the server side closes first: its end waits in TIME_WAIT, as after a stopped server
    server.close()
    client.close()
    assert port_free("127.0.0.1", port)
    with pytest.raises(ValueError, match="no address of this machine"):
        port_free("203.0.113.7", port)


@pytest.mark.parametrize("extra, message", [
    (["--port", "70000"], "must be a port, 1 to 65535"),
    (["--host", "203.0.113.7"], "no address of this machine"),
    (["TWICE"], "is given twice"),
])
def test_serve_refuses_bad_input_in_one_line_leaving_nothing(runs, tmp_path, capsys, extra, message):
    pytest.importorskip("gradio")
    folders, prompts = runs
    extra = [folders[0] if e == "TWICE" else e for e in extra]
    args = ["study", "serve", *folders, *[e for e in extra if e == folders[0]], "--prompts", prompts,
            "--study", str(tmp_path / "study"), *[e for e in extra if e != folders[0]]]
    code = None
    try:
        code = main(args)
    except SystemExit as err:  # argparse's own refusal (the port's type)
        code = err.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "study").exists()


def test_a_database_that_cannot_be_opened_leaves_no_study_folder(runs, tmp_path, capsys):
    pytest.importorskip("gradio")
    folders, prompts = runs
    code = main(["study", "serve", *folders, "--prompts", prompts, "--study", str(tmp_path / "new"),
                 "--db", "postgresql+nosuchdriver://u:pw@127.0.0.1:1/x"])
    assert code == 2 and "cannot open the vote database" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_a_damaged_or_foreign_study_file_is_one_line(runs, tmp_path, capsys):
    study = tmp_path / "study"
    study.mkdir()
    (study / "study.json").write_text("{damaged")
    assert main(["study", "report", "--study", str(study)]) == 2
    err = capsys.readouterr().err
    assert "study.json is not valid JSON" in err and "damaged" in err
    (study / "study.json").write_text(json.dumps({"csv": None}))
    assert main(["study", "report", "--study", str(study)]) == 2
    assert "is not a study definition (no runs" in capsys.readouterr().err


def test_database_passwords_are_masked_and_foreign_tables_refused(tmp_path):
    with pytest.raises(ValueError, match="cannot open the vote database") as err:
        VoteStore("postgresql+nosuchdriver://user:hunter2@127.0.0.1:1/votes")
    assert "hunter2" not in str(err.value)
    db = tmp_path / "other.db"
    sqlite3.connect(db).execute("CREATE TABLE votes (id INTEGER PRIMARY KEY, something TEXT)").connection.commit()
    with pytest.raises(ValueError, match="votes table is of another schema"):
        VoteStore(f"sqlite:///{db}")


def test_the_rater_key_is_kept_in_the_study_folder(tmp_path):
    from ella.study.cli import study_secret

    first = study_secret(str(tmp_path))
    assert first == study_secret(str(tmp_path)) and len(first) == 64  # the same key after a restart
    assert oct(os.stat(tmp_path / "secret.key").st_mode & 0o777) == "0o600"


@pytest.fixture
def postgres():
    """A real PostgreSQL server of its own (Debian's postgresql package), on a free port; skipped,
    saying why, where the server or psycopg is absent."""
    import shutil
    import tempfile

    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL's initdb and pg_ctl are not installed (Debian: apt-get install postgresql)")
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install -e '.[postgres]')")
    root = tempfile.mkdtemp(prefix="ella-pg-")
    os.chmod(root, 0o755)
    as_user = []
    if os.geteuid() == 0:  # the server refuses to run as root: as the postgres user
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = os.path.join(root, "data"), _free_port()
    subprocess.run([*as_user, initdb, "-D", data, "-A", "trust", "-U", "ella"], check=True, capture_output=True)
    subprocess.run([*as_user, pg_ctl, "-D", data, "-l", os.path.join(root, "log"), "-w", "start", "-o",
                    f"-p {port} -k {root} -c listen_addresses=127.0.0.1"], check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://ella:not-shown@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_two_servers_forty_raters_on_postgresql_one_killed_mid_vote(runs, tmp_path, postgres):
    pytest.importorskip("gradio_client")
    import sqlalchemy as sa

    env = {"ELLA_STUDY_DB": postgres}  # the password never on a command line, never stored
    servers = [_serve(tmp_path, runs, f"study{i}", env, started=False) for i in range(2)]  # at once: a table race
    servers = [_wait_for(process, port) for process, port in servers]
    try:
        saved = (tmp_path / "study0" / "study.json").read_text()
        assert "not-shown" not in saved and "***" in saved
        stored, errors, shown = [], [], []
        threads = [threading.Thread(target=_rater, args=(f"http://127.0.0.1:{servers[i % 2][1]}/", f"rater{i}", 2,
                                                         stored, errors, shown)) for i in range(40)]
        for t in threads:
            t.start()
        time.sleep(3)
        servers[1][0].kill()  # one server, mid-vote: SIGKILL
        for t in threads:
            t.join(timeout=300)
        assert len(stored) >= 40  # the live server's raters all finished
        assert not any(m in json.dumps(pair) for pair in shown for m in MODELS)  # never a model's name
        engine = sa.create_engine(postgres)
        with engine.connect() as db:
            rows = [r[0] for r in db.execute(sa.text("SELECT shown_id FROM votes"))]
        assert len(rows) == len(set(rows)) and set(stored) <= set(rows)  # every confirmed vote, once
    finally:
        for process, _ in servers:
            process.kill()


def test_the_page_says_what_its_images_are_and_starts_without_warnings(runs, tmp_path):
    gr = pytest.importorskip("gradio")
    import warnings

    from ella.study.app import build_study_app

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        app = build_study_app(_server(runs, tmp_path), secret="k" * 64, note="Each image is a grid of 4 samples.")
    assert not [w for w in caught if "css" in str(w.message).lower()]  # Gradio 6 takes css at launch
    texts = [b.value for b in app.blocks.values() if isinstance(b, gr.Markdown)]
    assert any("grid of 4 samples" in t for t in texts)
