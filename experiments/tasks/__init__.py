"""Fine-tuning a pretrained LM on task subsets: which instruction tasks help or hurt a target.

Tasks: 15 short instruction tasks (reasoning-gym generators, and hand-written templates for the
planted relations: substitutes, complements, a label-flipped conflict) with their own training
examples, and 6 held-out target tasks with evaluation examples (`data.py`). Outcome F(S) [T]: the
mean answer-token cross-entropy of each target's evaluation examples after fine-tuning
SmolLM2-135M-Instruct (theta0) with LoRA on the union of S's training examples for a fixed step
budget (`finetune.py`; on the cpu config the top blocks over cached hidden states of the frozen
ones, `lora.py`). Estimated outcomes: the one-step estimator on per-layer factorized (LoGra)
projections of the LoRA gradients at theta0 (`ksurrogate.projection`).
"""
