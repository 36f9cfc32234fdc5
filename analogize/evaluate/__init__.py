"""Robustness evaluation: grids of bits x EP x activation over noise draws (:mod:`.engine`), and their tables,
CSV, plots and merged shards (:mod:`.results`).
"""
