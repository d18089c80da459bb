"""Numbers the papers publish, quoted so that measured results can stand next to them.

Every figure here is "published": copied from the text of Zhao et al., Sci Rep 11, 14353
(2021) and Javaheri et al., npj Digit Med 4, 29 (2021); percentages on the COVIDx CT-2A test
split (Zhao) or the method's own validation set (Javaheri). Figures 6-8 of Zhao et al. are
plots without printed values; only the values their text quotes are here.
"""
from __future__ import annotations

from ..constants import SLICE_CLASSES

ZHAO = "Zhao et al. 2021"
JAVAHERI = "Javaheri et al. 2021"

#: Table 1: test accuracy (%).
TABLE1_ACCURACY = {
    "COVID-Net CT-1": 94.5, "COVID-Net CT-2 L": 98.1, "COVID-Net CT-2 S": 97.9,
    "Random (Zhao et al.)": 97.9, "BiT-S (Zhao et al.)": 98.8, "BiT-M (Zhao et al.)": 99.2,
}
#: Table 2: Sn, PPV, Sp, NPV (%) for Normal, CP, NCP, in that order within each figure.
_TABLE2_ROWS = {
    "COVID-Net CT-1": (98.8, 99.0, 80.2, 96.1, 90.2, 97.6, 96.3, 95.7, 99.4, 98.9, 99.6, 94.2),
    "COVID-Net CT-2 L": (99.0, 98.2, 96.2, 99.4, 97.2, 96.7, 99.5, 98.8, 99.0, 99.1, 99.3, 98.8),
    "COVID-Net CT-2 S": (98.9, 98.1, 95.7, 99.3, 97.0, 96.4, 99.3, 98.8, 98.9, 99.0, 99.2, 98.7),
    "Random (Zhao et al.)": (97.9, 98.6, 96.9, 98.9, 97.5, 96.4, 99.0, 99.0, 98.9, 98.1, 99.4, 99.1),
    "BiT-S (Zhao et al.)": (99.0, 99.3, 97.9, 99.6, 97.9, 98.4, 99.6, 99.1, 99.5, 99.1, 99.7, 99.4),
    "BiT-M (Zhao et al.)": (99.3, 99.6, 98.7, 99.8, 98.9, 98.5, 99.8, 99.6, 99.5, 99.3, 99.8, 99.6),
}
FIGURES = ("sn", "ppv", "sp", "npv")
#: {model: {"sn_Normal": 98.8, ...}}
TABLE2 = {model: {f"{fig}_{cls}": values[3 * i + j]
                  for i, fig in enumerate(FIGURES) for j, cls in enumerate(SLICE_CLASSES)}
          for model, values in _TABLE2_ROWS.items()}
#: Which published row each measured initialisation is compared with.
INIT_ROWS = {"random": "Random (Zhao et al.)", "bit-s": "BiT-S (Zhao et al.)",
             "bit-m": "BiT-M (Zhao et al.)"}
#: Table 3: (validation, test) accuracy (%) by initialisation.
TABLE3 = {"random": (96.5, 97.7), "bit-s": (97.4, 98.8), "bit-m": (97.9, 99.3),
          "bit-m-c": (97.7, 99.2), "bit-m-s": (97.6, 98.9)}
#: Fig. 8, as the text quotes it: test accuracy (%) of BiT-M by images per class.
FIG8 = {100: 94.8, 1000: 98.0, "full": 99.2}
#: The reference bars on the right of Fig. 8 (Table 1 values).
FIG8_REFERENCES = {"COVID-Net CT-2 L": 98.1, "COVID-Net CT-2 S": 97.9, "COVID-Net CT-1": 94.5}
#: CovidCTNet's own validation figures (Fig. 4; 15 patients): accuracy (%) and COVID-19 AUC.
COVIDCTNET = {"3-class": {"val_acc": 86.66}, "COVID-19 vs rest": {"val_acc": 93.33, "val_covid_auc": 0.94}}
