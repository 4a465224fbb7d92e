"""mlic's progress bars and console lines."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import threading
    from mlic.runtime.console import log, progress_bar
    for progress in (False, True):
        for _ in progress_bar(range(3), progress=progress):
            pass
    log("done")
    print(sorted(t.name for t in threading.enumerate()))
    """
)


def test_progress_bars_start_no_thread_a_forked_worker_could_inherit():
    """tqdm starts a monitor thread with every bar, even a disabled one; mlic's bars must not (runtime.console:
    a thread starting or ending during a DataLoader's fork can deadlock the worker on Python <= 3.11.7)."""
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines()[-1] == "['MainThread']", done.stdout
