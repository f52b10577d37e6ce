"""Benchmarks: DPG-Bench (`ella.bench.dpg`) and its VQA judges (`ella.bench.vqa`)."""
