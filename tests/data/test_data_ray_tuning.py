"""The two Ray Data scheduler settings in `raytools.tune_ray_data` (see its docstring for the measurements).

They are class/module constants of Ray's streaming executor. If a Ray upgrade moves or renames them the
settings silently stop applying and short data passes get ~20-30% slower: this test fails instead, so that
whoever upgrades Ray re-measures with `python -m benchmarks.data_ingest` and updates `tune_ray_data`."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_reader_applies_both_settings():
    # a fresh interpreter: the process that unpickles a dataset (e.g. Ray Train's split coordinator) has
    # imported nothing of ours but the reader module
    code = (
        "import pipelines.data.reader\n"
        "from ray.data._internal.execution import streaming_executor_state as s\n"
        "from ray.data._internal.execution.resource_manager import ResourceManager as R\n"
        "print(R.GLOBAL_LIMITS_UPDATE_INTERVAL_S, s.WAIT_FOR_TASK_COMPLETION_TIMEOUT_S)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    from pipelines.data.raytools import DATA_LIMITS_REFRESH_S, DATA_TASK_WAIT_S

    assert [float(x) for x in out] == [DATA_LIMITS_REFRESH_S, DATA_TASK_WAIT_S]
    assert DATA_LIMITS_REFRESH_S < 1.0 and DATA_TASK_WAIT_S < 0.1  # below Ray 2.60's defaults


def test_the_executor_reads_them_at_run_time():
    """Ray reads both per call (not copied at import), so setting them after Ray Data is imported works."""
    import inspect

    from ray.data._internal.execution import resource_manager, streaming_executor_state

    assert "self.GLOBAL_LIMITS_UPDATE_INTERVAL_S" in inspect.getsource(
        resource_manager.ResourceManager.get_global_limits
    )
    assert "timeout=WAIT_FOR_TASK_COMPLETION_TIMEOUT_S" in inspect.getsource(
        streaming_executor_state.process_completed_tasks
    )
