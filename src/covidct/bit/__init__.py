"""The BiT slice classifier (Zhao et al. 2021): data, weights, model, schedule, training.

- :mod:`.data`: COVIDx dataset, BiT-HyperRule transforms, step sampler, mixup.
- :mod:`.weights`: initialisation names -> weight files / hub tags.
- :mod:`.model`: ``create_model`` and ``SliceClassifier`` (what a model file loads into).
- :mod:`.schedule`: the BiT learning-rate schedule and the paper's presets.
- :mod:`.train`: ``train(TrainConfig) -> RunResult`` and the torchrun entry point.
"""
