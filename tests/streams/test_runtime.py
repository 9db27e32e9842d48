import gc

import pytest

from streams.runtime import GEN0_THRESHOLD, tune_gc


@pytest.fixture
def restore_gc():
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_tune_gc_raises_the_young_threshold_and_freezes_start_up_objects(restore_gc):
    gen1, gen2 = gc.get_threshold()[1:]
    assert tune_gc() == (GEN0_THRESHOLD, gen1, gen2)
    assert gc.get_freeze_count() > 0
    # Cyclic garbage is still collected.
    class Node:
        pass
    a, b = Node(), Node()
    a.other, b.other = b, a
    del a, b
    assert gc.collect() >= 2


def test_tune_gc_refuses_a_threshold_below_one(restore_gc):
    with pytest.raises(ValueError):
        tune_gc(0)
