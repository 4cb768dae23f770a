"""Task functions for tests/test_dask.py that must run on the workers.

The workers cannot import the test module (pytest's importlib mode names it
``tests.test_dask``), so the tests send this file to them with
``Client.upload_file``, which also reaches workers restarted later.
"""
import os
import signal


def die_once(block, marker, block_id=None):
    """Kills its worker process (SIGKILL) the first time it runs on the
    third chunk along axis 0; the marker file says it happened."""
    if block_id[0] == 2 and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return block
