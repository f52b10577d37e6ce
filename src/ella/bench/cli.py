"""`ella bench ...` subcommands."""

from __future__ import annotations


def add_bench_parsers(sub, add_model_args) -> None:
    pass


def run_bench_command(args) -> None:
    raise ValueError(f"unknown bench command {args.bench!r}")
