"""The score chart shared by the leaderboard and the sweep summary, and the per-run plots' strict log reading."""

from __future__ import annotations

import pytest

from utils.errors import UserError
from utils.evaluation.leaderboard import plot_leaderboard
from utils.evaluation.plots import plot_run, score_bars

ROWS = [
    {"method": "ga", "final_score": 0.41, "task_aggregate": 0.2, "mia_score": 0.6, "utility": 0.43},
    {"method": "sugd", "final_score": 0.55, "task_aggregate": None, "mia_score": 0.7, "utility": 0.45,
     "final_score_min": 0.5, "final_score_max": 0.6},
]


def test_score_bars_writes_a_png_for_one_line_and_several_line_labels(tmp_path):
    written = score_bars(ROWS, tmp_path / "board.png", ["ga", "sugd"], "Leaderboard", reference=ROWS[0])
    assert written == tmp_path / "board.png" and written.read_bytes()[:4] == b"\x89PNG"
    sweep = score_bars(ROWS, tmp_path / "sweep.png", ["lr=1e-5\nsteps=10", "lr=2e-5\nsteps=10"], "Sweep")
    assert sweep.read_bytes()[:4] == b"\x89PNG"
    assert plot_leaderboard(ROWS, tmp_path / "lb.png").is_file()
    with pytest.raises(ValueError, match="1 labels for 2 rows"):
        score_bars(ROWS, tmp_path / "x.png", ["ga"], "Leaderboard")


def test_plot_run_skips_absent_logs_and_names_a_malformed_line(tmp_path):
    assert plot_run(tmp_path) == []
    (tmp_path / "log.jsonl").write_text('{"global_step": 1, "loss": 2.0}\n{"global_step": 2, "lo\n')
    with pytest.raises(UserError, match=r"log.jsonl: line 2 is not valid JSON"):
        plot_run(tmp_path)
