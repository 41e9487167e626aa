"""Each detector's chain test that does not need HypoPG, on every major of the matrix
(issue 22): the integration tests as they are (real collector -> gRPC -> analyser -> NATS),
their fixtures overridden by ``conftest.py`` to run on each server. The chains need no
HypoPG (the analyser never asks the database); only the executor's pre-check does. Left
out: what needs a tool the cached builds do not ship (``pg_resetwal``: the aged-cluster
xid_wraparound test; the burst one here covers the detector)."""

from __future__ import annotations

import pytest

from tests.integration.test_chain_indexes import (
    test_duplicate_index_flags_exact_twins_and_prefixes_but_not_distinct_indexes,
    test_invalid_index_leaves_someone_elses_live_build_alone_but_not_the_executors,
    test_unused_index_flags_only_the_never_scanned_droppable_index,
)
from tests.integration.test_chain_missing_index import (
    test_missing_index_candidates_and_their_twins,
    test_slow_statement_for_the_slow_one_only,
)
from tests.integration.test_chain_sessions import (
    test_blocking_lock_reports_the_root_blocker_only_and_its_twin_is_quiet,
    test_connection_saturation_on_a_small_server_and_its_twin_is_quiet,
    test_idle_in_transaction_one_id_while_it_lasts,
    test_long_running_query_and_its_healthy_twin,
)
from tests.integration.test_chain_tables import (
    test_cache_hit_ratio_of_a_table_bigger_than_shared_buffers_and_its_hot_twin,
    test_dead_tuples_stale_statistics_invalid_index_and_twins,
    test_vacuum_blocked_names_a_prepared_transaction,
    test_vacuum_blocked_names_the_horizon_holder_and_its_twin_is_quiet,
    test_xid_wraparound_fires_when_a_burst_of_transactions_crosses_max_ratio,
)

__all__ = [
    "test_blocking_lock_reports_the_root_blocker_only_and_its_twin_is_quiet",
    "test_cache_hit_ratio_of_a_table_bigger_than_shared_buffers_and_its_hot_twin",
    "test_connection_saturation_on_a_small_server_and_its_twin_is_quiet",
    "test_dead_tuples_stale_statistics_invalid_index_and_twins",
    "test_duplicate_index_flags_exact_twins_and_prefixes_but_not_distinct_indexes",
    "test_idle_in_transaction_one_id_while_it_lasts",
    "test_invalid_index_leaves_someone_elses_live_build_alone_but_not_the_executors",
    "test_long_running_query_and_its_healthy_twin",
    "test_missing_index_candidates_and_their_twins",
    "test_slow_statement_for_the_slow_one_only",
    "test_unused_index_flags_only_the_never_scanned_droppable_index",
    "test_vacuum_blocked_names_a_prepared_transaction",
    "test_vacuum_blocked_names_the_horizon_holder_and_its_twin_is_quiet",
    "test_xid_wraparound_fires_when_a_burst_of_transactions_crosses_max_ratio",
]

pytestmark = pytest.mark.pg_matrix
