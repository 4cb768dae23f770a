"""attnx.KVCache: a decoding loop's keys and values, appended in place."""
import numpy as np
import pytest

import attnx

rng = np.random.default_rng(12)


def test_matches_attend_over_the_same_rows():
    cache = attnx.KVCache(8, 5, capacity=3)
    K, V = rng.standard_normal((40, 8)), rng.standard_normal((40, 5))
    out = np.empty(5)
    for t in range(40):
        cache.append(K[t], V[t])
        q = rng.standard_normal(8)
        want = attnx.attend(q, K[:t + 1], V[:t + 1], scale=0.3)
        np.testing.assert_array_equal(cache.attend(q, scale=0.3), want)
        assert cache.attend(q, scale=0.3, out=out) is out
        np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(cache.keys, K)
    np.testing.assert_array_equal(cache.values, V)


def test_growth_is_amortised_and_keeps_rows():
    cache = attnx.KVCache(4, 2, capacity=0)
    caps = []
    for t in range(1000):
        cache.append(np.full(4, t), np.full(2, -t))
        caps.append(cache.capacity)
    assert len(set(caps)) <= 8              # 16, 32, ..., 1024: doubling, not +1
    assert cache.keys[:, 0].tolist() == list(range(1000))
    assert cache.values[:, 1].tolist() == [-t for t in range(1000)]


def test_no_copy_while_capacity_allows():
    cache = attnx.KVCache(4, capacity=10)
    cache.append(np.ones(4))
    before = cache.keys.__array_interface__["data"][0]
    for _ in range(9):
        cache.append(np.ones(4))
    assert cache.keys.__array_interface__["data"][0] == before
    cache.append(np.ones(4))                # the 11th row reallocates
    assert cache.capacity >= 11


def test_shared_values_are_the_keys_and_the_worked_example():
    cache = attnx.KVCache(3)
    cache.extend([[3, 12, 45], [59, 2, 5], [1, 43, 5], [4, 3, 45.3]])
    np.testing.assert_allclose(cache.attend([5.0, 1.0, 20.0]),
                               [3.88079708, 4.0728263, 45.26423912], rtol=1e-8)
    assert cache.values is not None and cache.shared


def test_batched_queries_and_weights():
    cache = attnx.KVCache(6, 3)
    cache.extend(rng.standard_normal((9, 6)), rng.standard_normal((9, 3)))
    Q = rng.standard_normal((2, 4, 6))
    ctx, w = cache.attend(Q, return_weights=True)
    want_ctx, want_w = attnx.attend(Q, cache.keys, cache.values, return_weights=True)
    np.testing.assert_array_equal(ctx, want_ctx)
    np.testing.assert_array_equal(w, want_w)


# Beyond x86-64's 47-bit user address space (2**53 bytes): no allocation
# succeeds, whatever the kernel's overcommit policy
HUGE_ROWS = 2**50


@pytest.mark.simd_independent
def test_sizes_no_buffer_can_hold_raise_memory_error_naming_the_cache():
    """NumPy's MemoryError is a subclass whose __init__ takes the shape and
    dtype: re-raising it with a message alone was a TypeError."""
    for make, where in [
            (lambda: attnx.KVCache(8, capacity=HUGE_ROWS // 8),
             r"KVCache\(d=8, dv=8, capacity=140737488355328\)"),
            (lambda: attnx.KVCache(HUGE_ROWS, capacity=1), r"KVCache\(d=1125899906842624, dv="),
            (lambda: attnx.KVCache(4, HUGE_ROWS, capacity=1), r"KVCache\(d=4, dv=1125899906842624,"),
            (lambda: attnx.KVCache(4, dtype=np.float32).reserve(HUGE_ROWS),
             r"KVCache\(d=4, dv=4, capacity=64\) growing to 1125899906842624 rows")]:
        with pytest.raises(MemoryError, match="^" + where) as e:
            make()
        assert type(e.value.__cause__) is not type(e.value) and \
            isinstance(e.value.__cause__, MemoryError)        # NumPy's own, chained
    # past NumPy's size limit: its ValueError, with the same prefix
    cache = attnx.KVCache(4, 2, capacity=3)
    cache.append(np.ones(4), np.ones(2))
    with pytest.raises(ValueError, match=r"^KVCache\(d=4, dv=2, capacity=3\) growing to "
                                         r"4611686018427387904 rows: ") as e:
        cache.reserve(2**62)
    assert isinstance(e.value.__cause__, ValueError)
    # the cache is as it was, and still grows
    assert cache.capacity == 3 and len(cache) == 1
    cache.reserve(100)
    assert cache.capacity == 100
    np.testing.assert_array_equal(cache.keys, np.ones((1, 4)))


@pytest.mark.simd_independent
@pytest.mark.parametrize("call,name", [
    (lambda: attnx.KVCache(2**63), "d"),
    (lambda: attnx.KVCache(4, 2**63), "dv"),
    (lambda: attnx.KVCache(4, capacity=2**64), "capacity"),
    (lambda: attnx.KVCache(4).reserve(2**63), "n"),
    (lambda: attnx.KVCache(4).reserve(np.uint64(2**63)), "n"),
], ids=["d", "dv", "capacity", "reserve", "reserve uint64"])
def test_sizes_beyond_ssize_t_name_the_argument(call, name):
    """A bare OverflowError ("Python int too large to convert to C ssize_t")
    named nothing."""
    with pytest.raises(ValueError, match=f"^{name} must be at most {2**63 - 1}"):
        call()


@pytest.mark.simd_independent
def test_sizes_below_ssize_t_name_the_argument():
    with pytest.raises(ValueError, match="^d must be >= 0"):
        attnx.KVCache(-2**63 - 1)
    with pytest.raises(ValueError, match="^n must be >= 0"):
        attnx.KVCache(4).reserve(-2**64)


def test_errors():
    cache = attnx.KVCache(3, 2)
    with pytest.raises(ValueError, match="T = 0"):
        cache.attend(np.ones(3))
    with pytest.raises(ValueError):
        cache.append(np.ones(3))                       # needs a value
    with pytest.raises(ValueError, match=r"\(4,\)"):
        cache.append(np.ones(4), np.ones(2))
    with pytest.raises(ValueError):
        cache.extend(np.ones((2, 3)), np.ones((3, 2)))
    with pytest.raises(TypeError):
        cache.append(["a", "b", "c"], np.ones(2))
    shared = attnx.KVCache(3)
    with pytest.raises(ValueError):
        shared.append(np.ones(3), np.ones(3))
    with pytest.raises(ValueError):
        attnx.KVCache(-1)
    # sizes that are not integers: named
    for kw, name in ((dict(d=1.5), "d"), (dict(d=3, capacity=1.5), "capacity"),
                     (dict(d=3, dv="a"), "dv")):
        with pytest.raises(TypeError, match=f"{name} must be an integer"):
            attnx.KVCache(**kw)
    with pytest.raises(TypeError, match="n must be an integer"):
        cache.reserve(1.5)
    # bools are not sizes; reserve of a negative count; sizes no buffer can
    # hold say which cache they were for
    for kw, name in ((dict(d=True), "d"), (dict(d=3, capacity=np.True_), "capacity")):
        with pytest.raises(TypeError, match=f"{name} must be an integer"):
            attnx.KVCache(**kw)
    with pytest.raises(ValueError, match="n must be >= 0"):
        cache.reserve(-1)
    with pytest.raises((ValueError, MemoryError), match=r"KVCache\(d=3, dv=3, capacity=4611686018427387904\)"):
        attnx.KVCache(3, capacity=2**62)
    cache.reserve(np.int64(100))
    assert cache.capacity >= 100
    cache.append(np.ones(3), np.ones(2))
    with pytest.raises(ValueError):
        cache.keys[0, 0] = 5.0                          # a read-only view
    cache.clear()
    assert len(cache) == 0
