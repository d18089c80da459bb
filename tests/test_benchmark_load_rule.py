"""The benchmarks' load rule (issue 18): a row is judged by the CPU time other processes used
while it ran, not by the load average, which counts the benchmark's own threads."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `benchmarks` lives at the repository root, beside src/
    sys.path.insert(0, str(REPO))

from benchmarks.common import (CpuSnapshot, cpu_snapshot, other_cpu, other_cpu_limit,  # noqa: E402
                               parse_proc_stat, row_loaded)

# user nice system idle iowait irq softirq steal guest guest_nice, in ticks of 1/100 s
PROC_STAT = """cpu  1000 200 300 9000 400 50 50 100 700 0
cpu0 500 100 150 4500 200 25 25 50 350 0
cpu1 500 100 150 4500 200 25 25 50 350 0
intr 12345
"""


def test_busy_time_is_read_from_the_all_cpus_line():
    # user + nice + system + irq + softirq + steal; idle, iowait and guest (inside user) not
    assert parse_proc_stat(PROC_STAT, 100) == (1000 + 200 + 300 + 50 + 50 + 100) / 100


def _row(wall_s, busy_s, own_s):
    return CpuSnapshot(0.0, 0.0, 0.0), CpuSnapshot(wall_s, busy_s, own_s)


def test_the_runs_own_threads_do_not_make_a_row_loaded():
    # Issue 18's case: 2 cores, a 60 s row whose 2 threads kept both cores busy lifts the
    # 1-minute load average from 0.5 to 1.9, above half the cores; the old rule marked it.
    limit = other_cpu_limit(2)
    assert limit == 0.5
    others = other_cpu(*_row(60.0, busy_s=119.0, own_s=117.5))
    assert others == 0.025
    assert not row_loaded(others, limit, load_before=0.5, load_limit_=1.0)
    # ... and the load average does not count when the CPU time is known, even a high one
    assert not row_loaded(others, limit, load_before=1.9, load_limit_=1.0)


def test_other_jobs_make_a_row_loaded():
    # Another job held most of a core: the run got 80 of the 120 core-seconds.
    others = other_cpu(*_row(60.0, busy_s=120.0, own_s=80.0))
    assert others == round(40 / 60, 3) and row_loaded(others, other_cpu_limit(2))
    # Just under and just over a quarter of 2 cores.
    assert not row_loaded(other_cpu(*_row(10.0, 15.0, 10.1)), 0.5)
    assert row_loaded(other_cpu(*_row(10.0, 15.0, 9.9)), 0.5)


def test_without_proc_stat_the_start_load_decides():
    before, after = CpuSnapshot(0.0, None, 0.0), CpuSnapshot(10.0, None, 5.0)
    assert other_cpu(before, after) is None
    assert row_loaded(None, 0.5, load_before=1.2, load_limit_=1.0)
    assert not row_loaded(None, 0.5, load_before=0.8, load_limit_=1.0)


def test_the_report_marks_rows_by_other_processes_not_by_load_average():
    from benchmarks.run import _load_cell, _row_loaded

    result = {"max_load": 1.0, "max_other_cpu": 0.5, "loaded_at_start": False,
              "section_load": {"quiet": [0.5, 1.9], "busy": [0.4, 1.2]},
              "section_other_cpu": {"quiet": 0.03, "busy": 0.8}}
    assert _load_cell(result, "quiet") == "0.5 -> 1.9; others 0.03 cores"
    assert _load_cell(result, "busy") == "LOADED 0.4 -> 1.2; others 0.80 cores"
    # a run that started loaded marks every row
    assert _load_cell({**result, "loaded_at_start": True}, "quiet").startswith("LOADED")
    # a result written before other-CPU was recorded keeps the old rule (start or end load)
    old = {"max_load": 1.0, "loaded": False, "section_load": {"row": [0.5, 1.9]}}
    assert _row_loaded(old, "row") and _load_cell(old, "row").startswith("LOADED")


def test_own_cpu_counts_this_process_and_its_reaped_children():
    before = cpu_snapshot()
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:
        pass
    subprocess.run([sys.executable, "-c",
                    "import time\nt = time.process_time() + 0.3\nwhile time.process_time() < t: pass"],
                   check=True)
    after = cpu_snapshot()
    assert after.own_s - before.own_s >= 0.45
    others = other_cpu(before, after)
    if before.busy_s is not None:  # Linux: the machine's busy time covers ours
        assert after.busy_s - before.busy_s > 0 and others is not None and others >= 0


def test_a_merged_report_judges_each_row_by_the_run_that_measured_it():
    from benchmarks.run import _load_cell, merge_results

    # an earlier run that started loaded (old rule, no other-CPU figures) ...
    earlier = {"max_load": 1.0, "loaded": True, "loaded_at_start": True,
               "section_load": {"web": [0.5, 1.9]}, "web": {"s": 21.6}}
    # ... and rows rerun now on a quiet machine
    now = {"max_load": 1.0, "max_other_cpu": 0.5, "loaded_at_start": False, "loaded": False,
           "section_load": {"inference": [1.0, 1.5]}, "section_other_cpu": {"inference": 0.03},
           "inference": {"x": 1}, "machine": {}, "command": "rerun"}
    merged = merge_results(earlier, now)
    assert _load_cell(merged, "inference") == "1.0 -> 1.5; others 0.03 cores"
    assert _load_cell(merged, "web").startswith("LOADED")
    assert merged["loaded"] and merged["inference"] == {"x": 1} and merged["web"] == {"s": 21.6}
