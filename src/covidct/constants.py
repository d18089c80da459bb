"""Names and texts that every part of covidct shares. Defined here once.

Windows (HU ranges) live in :mod:`covidct.windowing`, next to the code that applies them.
"""

#: The slice classifier's classes, in the COVIDx CT label order (0, 1, 2).
#: The data splits, in the order they are listed everywhere (split files, cohorts, tables).
SPLITS = ("train", "val", "test")

SLICE_CLASSES = ("Normal", "CP", "NCP")
#: Long names for people (reports, the web page).
SLICE_CLASS_LONG = {
    "Normal": "Normal",
    "CP": "Common pneumonia",
    "NCP": "COVID-19 (novel coronavirus pneumonia)",
}
#: CovidCTNet's classes, in its label order.
VOLUME_CLASSES = ("Control", "CAP", "COVID-19")
#: Folder names of the CovidCTNet folder-per-class layout, in VOLUME_CLASSES order.
VOLUME_CLASS_FOLDERS = ("Control", "CAP", "Covid")

#: The COVID-19 class of each method (the positive class of the COVID-vs-rest view).
COVID_CLASS = {"bit": "NCP", "covidctnet": "COVID-19"}

DISCLAIMER = (
    "Research use only: covidct is not a medical device and its output is not a diagnosis."
)
SYNTHETIC_NOTICE = (
    "SYNTHETIC DATA: computer-generated phantoms, not patients. "
    "Results on them say nothing about clinical performance."
)
#: Written into DICOM SeriesDescription / NIfTI descrip of everything covidct synth makes.
SYNTHETIC_TAG = "COVIDCT SYNTHETIC PHANTOM"

#: The two methods, as named on the command line and in model files.
METHOD_BIT = "bit"
METHOD_COVIDCTNET = "covidctnet"
METHODS = (METHOD_BIT, METHOD_COVIDCTNET)

#: The slice classifier's initialisations (Zhao et al., Table 3); covidct.bit.weights
#: says which weight file or hub tag each one is.
BIT_INITS = ("random", "bit-s", "bit-m", "bit-m-s", "bit-m-c")
