"""Tuning of a genotype's width and embedding size with Optuna: proxy retraining per trial.

`pocketnas.tune.study.run_tune` runs one worker of a study; the storage helpers in
`pocketnas.tune.storage` import neither PyTorch nor the retraining code.
"""
