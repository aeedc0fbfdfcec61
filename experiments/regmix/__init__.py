"""`regmix`: surrogates of data mixtures on RegMix's released language-model runs.

Tasks are 17 Pile domains; an input is a mixture of them (proportions on the simplex), and F is
the validation loss on 13 Pile domains of a 1M-parameter LM pre-trained on that mixture (512
training runs, 256 test runs, released by Liu et al., ICLR 2025; `data/PROVENANCE.md`). Every
surrogate family is fitted on training runs, on raw proportions and through the input maps
(`ksurrogate.inputs`), beside the authors' LightGBM regressor, and scored on the test runs at
several training sizes; then mixtures are selected (`ksurrogate.mixtures.select`) and training
runs are chosen actively by posterior variance. Configs, commands, runtimes and results:
`config.py`.
"""
