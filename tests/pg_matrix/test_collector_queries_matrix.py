"""The collector's tables and indexes statements against the statistics views they replace,
row for row, on every major of the matrix (``tests/integration/test_collector_queries.py`` as
it is, on each server: fixtures from ``conftest.py``)."""

from __future__ import annotations

import pytest

from tests.integration.test_collector_queries import (
    schema,
    test_tables_and_indexes_equal_the_statistics_views_row_for_row,
)

__all__ = ["schema", "test_tables_and_indexes_equal_the_statistics_views_row_for_row"]

pytestmark = pytest.mark.pg_matrix
