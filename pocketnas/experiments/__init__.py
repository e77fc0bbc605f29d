"""NNI experiments: search spaces generated from the registries, and the trial entry point.

Nothing here imports NNI at module level; `nni_support.import_nni` does it when a function needs it.
"""
