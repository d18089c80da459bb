"""Rerun the papers' experiments: ``run_experiment(name, data, out, scale, overrides)``.

Presets (:data:`PRESETS`): ``resolution`` (Zhao et al. Fig. 6A), ``schedule`` (Fig. 6B),
``init`` (Table 3, Fig. 7), ``data-size`` (Fig. 8), ``table1`` (Tables 1-2) and
``covidctnet-ablation`` (Javaheri et al. Fig. 1), and ``learning-curve`` (not in the papers:
both methods on SYNTHETIC cohorts it makes, :mod:`.curve`). Each run of a grid is a resumable job in
``OUT/<experiment>/runs/``; see :mod:`.runner` for the folder layout, :mod:`.grid` for
overrides, :mod:`.outputs` and :mod:`.figures` for what is written.
"""
from .datasets import ExperimentData, find_data
from .grid import parse_set, read_config
from .presets import PRESETS, SCALES, Preset
from .runner import EXPERIMENT_FILE, Outcome, run_experiment

__all__ = ["EXPERIMENT_FILE", "ExperimentData", "Outcome", "PRESETS", "Preset", "SCALES",
           "find_data", "parse_set", "read_config", "run_experiment"]
