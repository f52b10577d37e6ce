"""`ella study serve` and `ella study report`."""

from __future__ import annotations

import csv
import json
import os

STUDY_FILE = "study.json"
DB_ENV = "ELLA_STUDY_DB"  # the database URL with its password: read from here, never stored
SECRET_FILE = "secret.key"  # keeps the browsers' rater ids readable across restarts


def add_parser(sub) -> None:
    from ..cli_args import port, positive_int

    s = sub.add_parser("study", help="the user study: blind pairwise votes in a database, and their statistics")
    ssub = s.add_subparsers(dest="study", required=True)
    serve = ssub.add_parser("serve", help="serve the voting page over image folders of `ella bench` runs")
    serve.add_argument("runs", nargs="+", help="image folders (`ella bench dpg generate --out`, or"
                       " `ella bench shapes`'s OUT/images/MODEL), on the same prompts")
    serve.add_argument("--csv", help="the question CSV of the prompts (gives the report's categories)")
    serve.add_argument("--prompts", help="or the prompt folder (prompts/<item_id>.txt)")
    serve.add_argument("--study", default="study", help="the study's folder: its definition and SQLite votes")
    serve.add_argument("--db", default=None, help=f"an SQLAlchemy URL (default: ${DB_ENV}, else sqlite in --study);"
                       " PostgreSQL: postgresql+psycopg://USER@HOST/DB with pip install -e '.[postgres]'; put a"
                       f" password in ${DB_ENV}, not on the command line")
    serve.add_argument("--host", default="127.0.0.1", help="address (0.0.0.0 for raters on the LAN)")
    serve.add_argument("--port", type=port, default=7861)
    serve.set_defaults(func=cmd_serve)
    report = ssub.add_parser("report", help="Bradley-Terry strengths, Elo, win rates; a plot; the raw votes as CSV")
    report.add_argument("--study", default="study")
    report.add_argument("--out", default=None, help="folder for report.json, report.md, votes.csv, strengths.png"
                        " (default: --study)")
    report.add_argument("--rounds", type=positive_int, default=200, help="bootstrap resamplings")
    report.set_defaults(func=cmd_report)


def open_study(args, create: bool = False):
    """(study, store) from the command's flags, or from the study folder's definition. Every check
    runs before anything is written: a refused serve leaves no study folder behind."""
    from .runs import load_study
    from .store import VoteStore, masked

    path = os.path.join(args.study, STUDY_FILE)
    saved = read_definition(path) if os.path.isfile(path) else None
    if create:
        runs = [os.path.abspath(r) for r in args.runs]
        twice = sorted({r for r in runs if runs.count(r) > 1})
        if twice:
            raise ValueError(f"{twice[0]} is given twice: a study compares different image folders")
        if saved is not None and runs != saved["runs"]:
            raise ValueError(f"{args.study} is a study of other folders ({', '.join(saved['runs'])}): use another"
                             " --study")
        url = args.db or os.environ.get(DB_ENV) or (saved or {}).get("db") or default_db(args.study)
        definition = {"runs": runs, "csv": _abs(args.csv), "prompts": _abs(args.prompts), "db": masked(url)}
    else:
        if saved is None:
            raise FileNotFoundError(f"no study in {args.study} (`ella study serve` makes one)")
        definition = saved
        url = os.environ.get(DB_ENV) or saved["db"]
    if "***" in masked(url) and url == masked(url):
        raise ValueError(f"the study's database needs its password: set {DB_ENV} to its URL")
    study = load_study(definition["runs"], definition["csv"], definition["prompts"])  # checks before any write
    made = create and not os.path.isdir(args.study)
    if create:
        os.makedirs(args.study, exist_ok=True)
    try:
        store = VoteStore(url)
    except ValueError:
        if made and not os.listdir(args.study):  # a database that cannot be opened leaves no empty study behind
            os.rmdir(args.study)
        raise
    if create:
        from ..fileio import write_text_atomic

        write_text_atomic(path, json.dumps(definition, indent=2))
    return study, store


def read_definition(path: str) -> dict:
    """study.json, checked: a damaged or foreign one is one line naming it."""
    from ..fileio import read_json_object

    try:
        definition = read_json_object(path, "study definition")
    except ValueError as err:
        raise ValueError(f"{err}: it is damaged; restore it, or use another --study") from None
    missing = [k for k in ("runs", "csv", "prompts", "db") if k not in definition]
    if missing or not isinstance(definition.get("runs"), list):
        raise ValueError(f"{path} is not a study definition (no {', '.join(missing) or 'list of runs'}): restore it,"
                         " or use another --study")
    return definition


def default_db(folder: str) -> str:
    return "sqlite:///" + os.path.abspath(os.path.join(folder, "votes.db"))


def _abs(path):
    return None if path is None else os.path.abspath(path)


def study_secret(folder: str) -> str:
    """The key the page's rater ids are kept with, made once per study (owner-only)."""
    import secrets

    path = os.path.join(folder, SECRET_FILE)
    if not os.path.isfile(path):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    with open(path, encoding="utf-8") as f:
        return f.read().strip()


def cmd_serve(args) -> None:
    from ..demo import check_can_serve
    from .app import CSS, StudyServer, build_study_app

    check_can_serve("ella study serve", args.host, args.port)
    study, store = open_study(args, create=True)
    grids = {r.settings.get("samples") for r in study.runs} - {None, 1}
    note = (f"Each image is a grid of {grids.pop()} samples of one model: judge the grid as a whole."
            if len(grids) == 1 else "")
    blind = os.path.join(args.study, "blind")
    print(f"ella study of {', '.join(study.models)} on {len(study.prompts)} prompts: http://{args.host}:{args.port}"
          " (Ctrl-C stops it)")
    # Gradio serves files from allowed folders only: the blind copies, never the models' folders.
    build_study_app(StudyServer(study, store, blind_dir=blind), study_secret(args.study), note).launch(
        server_name=args.host, server_port=args.port, allowed_paths=[os.path.abspath(blind)], css=CSS)


def cmd_report(args) -> None:
    from ..fileio import write_text_atomic
    from .stats import report

    study, store = open_study(args)
    votes = store.all_votes()
    if not votes:
        raise ValueError(f"the study in {args.study} has no votes yet")
    out = args.out or args.study
    os.makedirs(out, exist_ok=True)
    result = report(votes, study.models, study.categories, args.rounds)
    write_text_atomic(os.path.join(out, "report.json"), json.dumps(result, indent=2))
    text = markdown(result)
    write_text_atomic(os.path.join(out, "report.md"), text)
    with open(os.path.join(out, "votes.csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(votes[0]))
        writer.writeheader()
        writer.writerows(votes)
    plot(result, os.path.join(out, "strengths.png"))
    print(text)
    print(f"wrote {out}/report.json, report.md, votes.csv, strengths.png")


def markdown(result: dict) -> str:
    lines = [f"{result['votes']} votes"]
    for question in ("alignment", "aesthetics"):
        if question not in result:
            continue
        r = result[question]
        lines += ["", f"## {question}", "", "| model | Bradley-Terry | 95% interval | Elo |", "| --- | --- | --- | --- |"]
        for m, bt in sorted(r["bradley_terry"].items(), key=lambda kv: -kv[1]["strength"]):
            lo, hi = bt["ci95"]
            lines.append(f"| {m} | {bt['strength']:+.2f} | [{lo:+.2f}, {hi:+.2f}] | {r['elo'][m]:.0f} |")
        lines += ["", "| pair | win rate of the first | votes |", "| --- | --- | --- |"]
        lines += [f"| {pair} | {w['win_rate']:.2f} | {w['votes']} |" for pair, w in r["win_rates"].items()]
    for category, pairs in result.get("alignment_by_category", {}).items():
        lines += ["", f"alignment, prompts with {category} questions: "
                  + "; ".join(f"{p} {w['win_rate']:.2f} ({w['votes']})" for p, w in pairs.items())]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: str) -> None:
    """Strengths with their intervals, both questions (needs matplotlib; skipped with a note otherwise)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return
    questions = [q for q in ("alignment", "aesthetics") if q in result]
    fig, axes = plt.subplots(1, len(questions), figsize=(5 * len(questions), 3), squeeze=False)
    for ax, q in zip(axes[0], questions):
        bt = sorted(result[q]["bradley_terry"].items(), key=lambda kv: kv[1]["strength"])
        names = [m for m, _ in bt]
        values = [v["strength"] for _, v in bt]
        errors = [[v["strength"] - v["ci95"][0] for _, v in bt], [v["ci95"][1] - v["strength"] for _, v in bt]]
        ax.errorbar(values, range(len(bt)), xerr=errors, fmt="o", capsize=4)
        ax.set_yticks(range(len(bt)), names)
        ax.set_xlabel("Bradley-Terry strength (log-odds)")
        ax.set_title(q)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
