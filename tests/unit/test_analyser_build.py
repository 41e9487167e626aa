"""Moved to ``tests/support/snapshots_build.py`` (its own tests: ``test_snapshots_build.py``).

Kept only while ``test_analyser_server.py``, edited by a concurrent change, still imports the
builders from here; once it imports ``tests.support.snapshots_build``, delete this file.
"""

from tests.support.snapshots_build import *  # noqa: F403
