"""Every command's --help, as a user runs it: answers, exits 0, and shows no formatting left-overs."""
import os
import subprocess
import sys
from pathlib import Path

from covidct.cli import COMMANDS

SRC = str(Path(__file__).parents[1] / "src")


def test_every_command_help_reads_cleanly():
    env = {**os.environ, "PYTHONPATH": SRC}
    for name in ("", *COMMANDS):
        argv = [sys.executable, "-m", "covidct", *([name.replace("_", "-")] if name else []), "--help"]
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 0, (name, done.stderr)
        # argparse %-formats argument help but prints a description as written: "95%%" there
        # reached the user doubled
        assert "%%" not in done.stdout and "%(" not in done.stdout, (name, done.stdout)
