"""`ella study`: the paper's user study as a tool. Blind pairwise votes on images of `ella bench`
runs (`runs`), stored in a real database (`store`: SQLite in WAL mode, or any SQLAlchemy URL),
pairs scheduled so every model pair gets votes (`schedule`), served by a Gradio page (`app`), and
reported as Bradley-Terry strengths with bootstrap intervals, Elo and win rates (`stats`)."""
