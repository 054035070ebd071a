"""Moved to `pipelines/storage.py` (storage is shared by data, training, sweeps and model import/export).

This name stays an alias of that module (the same module object, so attributes and monkeypatches agree)
for imports not yet updated."""

import sys

from pipelines import storage as _storage

sys.modules[__name__] = _storage
