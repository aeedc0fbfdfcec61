"""`morl`: task attribution for a multi-objective PPO policy on gymnax CartPole.

Tasks are objectives (physics variants and reward shapings of CartPole); the outcome of a subset
is each target objective's normalized negative return after fine-tuning the meta-policy on the
subset's objectives (lower is better). Compared: every surrogate family on real and estimated
outcomes and influence functions on the policy loss, against leave-one-out fine-tunes averaged
over seeds (with their split-half reliability as the ceiling); then each surrogate's choice of
objectives per target, fine-tuned for real. Configs, commands, runtimes: `config.py` (its
`EXPERIMENT`); phases: `pipeline.py`.
"""
