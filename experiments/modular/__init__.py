"""`modular`: task attribution for transformers trained on modular arithmetic.

Tasks are the blocks (x // bar, y // bar) of the input grid; outcomes are per-example validation
cross-entropies. Compared per task: every surrogate family on exact retrains, on estimated
outcomes and on real fine-tunes, influence functions, TracIn and a TRAK-style score, against real
leave-one-out. Configs, their commands, runtimes and results: `config.py` (its `EXPERIMENT`);
phases: `pipeline.py`; the regime study (`--config=study`): `study.py`.
"""
