"""Moved to `ksurrogate.harness.store`; this name stays only for `features.save` / `features.load`
(test-only helpers that issue 20 item 6 removes with the estimator work). New code imports
`ksurrogate.harness.store`."""
from ksurrogate.harness.store import load_arrays  # noqa: F401
from ksurrogate.harness.store import save_arrays  # noqa: F401
from ksurrogate.harness.store import save_npy  # noqa: F401
