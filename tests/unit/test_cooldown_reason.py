"""A cooldown refusal quotes the cause of the occurrence it waits on once, however many
occurrences were refused in between (the reason used to nest and grow with each one)."""

from startupmonkey.executor.admission import _cause

CHAINED = ("cooling down until 2026-12-06T11:17:15+00:00: shop-0a9c697e75 ended Rejected: "
           "cooling down until 2026-12-06T11:17:15+00:00: shop-6099c9b793 ended Rejected: "
           "nothing to do: the table has no rows modified since the last ANALYZE any more")


def test_the_original_cause_is_quoted_once() -> None:
    assert _cause(CHAINED) == ("nothing to do: the table has no rows modified since the "
                               "last ANALYZE any more")


def test_an_ordinary_message_is_quoted_as_it_is() -> None:
    assert _cause("kept: 98% faster: the index is used") == "kept: 98% faster: the index is used"
