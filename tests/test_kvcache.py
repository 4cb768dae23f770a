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
