"""StreamChangeCache: which keys changed in a window, without a query when it can tell."""

from __future__ import annotations

from starling.storage.change_cache import StreamChangeCache


def test_knows_nothing_until_started() -> None:
    cache: StreamChangeCache[str] = StreamChangeCache()
    cache.changed("!a", 5)
    assert cache.changed_between(["!a"], 0, 10) is None
    cache.start(3)
    assert cache.changed_between(["!a"], 2, 10) is None  # before what it knows
    assert cache.changed_between(["!a", "!b"], 3, 10) == ({"!a"}, [])


def test_window_edges_and_changes_after_upto() -> None:
    cache: StreamChangeCache[str] = StreamChangeCache()
    cache.start(0)
    cache.changed("!a", 5)
    cache.changed("!b", 9)
    assert cache.changed_between(["!a", "!b", "!c"], 5, 9) == ({"!b"}, [])
    assert cache.changed_between(["!a", "!b"], 4, 8) == ({"!a"}, ["!b"])  # !b: maybe
    # Positions recorded out of order (concurrent commits) keep the highest.
    cache.changed("!a", 3)
    assert cache.changed_between(["!a"], 4, 9) == ({"!a"}, [])


def test_forgetting_moves_what_it_knows_forward() -> None:
    cache: StreamChangeCache[str] = StreamChangeCache(max_keys=2)
    cache.start(0)
    cache.changed("!a", 1)
    cache.changed("!b", 2)
    cache.changed("!c", 3)  # forgets !a (changed at 1)
    assert cache.changed_between(["!a"], 0, 10) is None
    assert cache.changed_between(["!a", "!b", "!c"], 1, 10) == ({"!b", "!c"}, [])
