"""Moved to :mod:`covidct.synth.phantom` (synthetic phantoms live in covidct.synth); this name
stays so that code written against it keeps working."""
from ..synth.phantom import benchmark_series, chest_phantom, plant_lesions

__all__ = ["benchmark_series", "chest_phantom", "plant_lesions"]
