"""`reference`: the official recipe and ours on the outcome data released by the paper's authors.

Configs, commands, runtimes and results: `config.py` (its `EXPERIMENT`); the problems:
`pipeline.py`; the data and its provenance: `data/`.
"""
