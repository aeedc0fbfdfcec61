"""Packs the authors' released outcome files into the compact npz shipped with the project.

Run once from the repo root on the folder holding the authors' released JSON files:
`python -m ksurrogate_experiments.reference.pack_data DIR`.
Values are copied exactly (float64 from the JSON decimals); indicator matrices become bool.
"""
import json
import pathlib
import sys

import numpy as np


def pack(src: pathlib.Path, dst: pathlib.Path) -> None:
  for name in ("modular_addition", "modular_quad"):
    d = json.loads((src / f"{name}.json").read_text())
    np.savez_compressed(
        dst / f"{name}.npz",
        train_w=np.asarray(d["train_w"]) > 0.5,
        test_w=np.asarray(d["test_w"]) > 0.5,
        train_scores=np.asarray(d["train_subset_scores"], np.float64),
        test_scores=np.asarray(d["test_subset_scores"], np.float64),
    )
  scores = json.loads((src / "coin_flip_subset_scores_loss.json").read_text())
  ids = json.loads((src / "coin_flip_train_ids_list.json").read_text())
  np.savez_compressed(
      dst / "coin_flip.npz",
      train_ids=np.asarray(ids, np.int32),
      scores=np.asarray(scores, np.float64),
  )


if __name__ == "__main__":
  pack(pathlib.Path(sys.argv[1]), pathlib.Path(__file__).parent / "data")
