"""What a new user meets first at the API (issue 16): error messages that
name the argument, causal=True with one query, pickling a KVCache,
inspectable signatures, KVCache[dtype] and long double input."""
import copy
import inspect
import pickle

import numpy as np
import pytest

import attnx

pytestmark = pytest.mark.simd_independent
Q, K = np.array([5.0, 1.0, 20.0]), np.array([[3, 12, 45], [59, 2, 5], [1, 43, 5], [4, 3, 45.3]])


# --- error messages name the argument -----------------------------------------

SCALED = [
    ("attend", lambda s: attnx.attend(Q, K, scale=s)),
    ("attend, general path", lambda s: attnx.attend(Q[None], K, scale=s, mask=np.ones(4, bool))),
    ("dot_score", lambda s: attnx.dot_score(Q, K, scale=s)),
    ("general_score", lambda s: attnx.general_score(Q, K, np.eye(3), scale=s)),
    ("KVCache.attend", lambda s: _cache().attend(Q, scale=s)),
]


def _cache():
    c = attnx.KVCache(3)
    c.extend(K)
    return c


@pytest.mark.parametrize("call", [c for _, c in SCALED], ids=[n for n, _ in SCALED])
@pytest.mark.parametrize("bad,says", [("a", "got str 'a'"),
                                      (np.array([1.0, 2.0]), "array of shape (2,)"),
                                      (1j, "got complex"), (None, "got NoneType")])
def test_bad_scale_names_scale(call, bad, says):
    with pytest.raises(TypeError, match="scale must be a real number") as e:
        call(bad)
    assert says in str(e.value)


@pytest.mark.parametrize("call", [c for _, c in SCALED], ids=[n for n, _ in SCALED])
@pytest.mark.parametrize("bad", [10**400, -10**400, np.longdouble("1e4000")],
                         ids=["int", "-int", "longdouble"])
def test_scale_beyond_float64_names_scale(call, bad):
    """A finite scale that float64 cannot hold: it would become inf and the
    result NaN (a long double) or an unnamed OverflowError (an int)."""
    if isinstance(bad, np.longdouble) and np.isinf(np.float64(bad)) == np.isinf(bad):
        pytest.skip("long double is float64 here")
    with pytest.raises(ValueError, match="scale is beyond float64's range"):
        call(bad)


Q32, K32 = Q.astype(np.float32), K.astype(np.float32)


def _cache32(rows):
    c = attnx.KVCache(3, dtype=np.float32)
    c.extend(rows)
    return c


def _backward32(s):
    out, lse = attnx.attend(Q32[None], K32, return_lse=True)
    return attnx.attend_backward(np.ones_like(out), Q32[None], K32, K32, out, lse, scale=s)


def _varlen32(s, backward=False):
    q, k = Q32[None, None], K32[:, None]
    cq, ck = np.array([0, 1]), np.array([0, len(K32)])
    if not backward:
        return attnx.attend_varlen(q, k, k, cq, ck, scale=s)
    out, lse = attnx.attend_varlen(q, k, k, cq, ck, return_lse=True)
    return attnx.attend_varlen_backward(np.ones_like(out), q, k, k, out, lse, cq, ck, scale=s)


SCALED32 = [
    ("attend", lambda s: attnx.attend(Q32, K32, scale=s)),
    ("attend, general path", lambda s: attnx.attend(Q32[None], K32, scale=s)),
    ("attend, float32 with float16", lambda s: attnx.attend(Q32[None], K.astype(np.float16),
                                                            scale=s)),
    ("dot_score", lambda s: attnx.dot_score(Q32, K32, scale=s)),
    ("dot_score, general path", lambda s: attnx.dot_score(Q32[None], K32, scale=s)),
    ("general_score", lambda s: attnx.general_score(Q32, K32, np.eye(3, dtype=np.float32),
                                                    scale=s)),
    ("KVCache.attend", lambda s: _cache32(K32).attend(Q32, scale=s)),
    ("KVCache.attend, float64 query", lambda s: _cache32(K32).attend(Q, scale=s)),
    ("KVCache.attend, general path", lambda s: _cache32(K32).attend(Q32[None], scale=s)),
    ("attend_backward", _backward32),
    ("attend_varlen", _varlen32),
    ("attend_varlen_backward", lambda s: _varlen32(s, backward=True)),
]


@pytest.mark.parametrize("call", [c for _, c in SCALED32], ids=[n for n, _ in SCALED32])
@pytest.mark.parametrize("bad", [1e39, -1e39, 3.5e38, np.float64(1e39), 10**39, np.array(1e39)],
                         ids=["1e39", "-1e39", "3.5e38", "np.float64", "int", "0-d array"])
def test_scale_beyond_float32_names_scale_for_float32_work(call, bad):
    """float32 work rounds scale to float32: a finite scale beyond its range
    became inf, and every result NaN (or +-inf scores), silently. The rule
    of float64's range (and of a bias beyond float32's) holds for it too."""
    with pytest.raises(ValueError, match="^scale is beyond float32's range"):
        call(bad)
    fmax = float(np.finfo(np.float32).max)
    for ok in (fmax, -fmax, np.inf):      # representable (inf is no finite value lost)
        with np.errstate(all="ignore"):
            call(ok)


@pytest.mark.parametrize("call", [c for _, c in SCALED], ids=[n for n, _ in SCALED])
def test_scale_accepts_real_numbers(call):
    want = call(0.5)
    for s in (np.float32(0.5), np.float64(0.5), np.array(0.5), 0.5):
        np.testing.assert_array_equal(call(s), want)
    np.testing.assert_array_equal(call(2), call(2.0))
    np.testing.assert_array_equal(call(True), call(1.0))


@pytest.mark.parametrize("call", [c for _, c in SCALED], ids=[n for n, _ in SCALED])
def test_scale_takes_numpy_bools_as_python_bools(call):
    """scale=True was accepted (as 1.0, NumPy's reading of a bool in
    arithmetic) and np.True_ refused: one rule for both."""
    for yes in (True, np.True_, np.array(True)):
        np.testing.assert_array_equal(call(yes), call(1.0))
    for no in (False, np.False_):
        np.testing.assert_array_equal(call(no), call(0.0))


@pytest.mark.parametrize("bad", [0.5, np.float64(1.0), np.array([True]), [], "top_left",
                                 "upper"], ids=repr)
def test_causal_errors_are_the_same_for_attend_and_attend_varlen(bad):
    """attend_varlen raised ValueError for causal=0.5 where attend raised
    TypeError: a wrong type is a TypeError, a wrong string a ValueError."""
    q, k = np.ones((2, 1, 3)), np.ones((4, 1, 3))
    with pytest.raises((TypeError, ValueError), match="^causal must be") as a:
        attnx.attend(q.transpose(1, 0, 2), k.transpose(1, 0, 2), causal=bad)
    with pytest.raises(type(a.value), match="^causal must be"):
        attnx.attend_varlen(q, k, k, [0, 2], [0, 4], causal=bad)
    assert type(a.value) is (ValueError if isinstance(bad, str) else TypeError)


@pytest.mark.parametrize("which", ["query", "keys", "values"])
def test_ragged_list_names_the_argument(which):
    args = {"query": Q.tolist(), "keys": K.tolist(), "values": K.tolist()}
    args[which] = [[1.0, 2.0, 3.0], [4.0, 5.0]]
    with pytest.raises(ValueError, match=f"^{which} is not a rectangular array"):
        attnx.attend(args["query"], args["keys"], args["values"])


def test_ragged_list_names_the_argument_elsewhere():
    with pytest.raises(ValueError, match="^x is not a rectangular array"):
        attnx.softmax([[1.0, 2.0], [3.0]])
    with pytest.raises(ValueError, match="^k is not a rectangular array"):
        attnx.KVCache(2).append([[1.0, 2.0], [3.0]])


def _unnamed_cases():
    q, Kb = np.ones((2, 3, 4)), np.ones((2, 5, 4))
    two = np.array([True, False])
    out, lse = attnx.attend(q, Kb, return_lse=True)
    bw = lambda **kw: attnx.attend_backward(*[kw.pop(n, x) for n, x in (
        ("grad_out", np.ones_like(out)), ("query", q), ("keys", Kb), ("values", Kb),
        ("out", out), ("lse", lse))], **kw)
    qv, kv = np.ones((3, 2, 4)), np.ones((5, 2, 4))
    cu_q, cu_k = np.array([0, 3]), np.array([0, 5])
    vout, vlse = attnx.attend_varlen(qv, kv, kv, cu_q, cu_k, return_lse=True)
    varlen = lambda **kw: attnx.attend_varlen(qv, kv, kv, cu_q, cu_k, **kw)
    varlen_bw = lambda **kw: attnx.attend_varlen_backward(np.ones_like(vout), qv, kv, kv, vout,
                                                          vlse, cu_q, cu_k, **kw)
    cache = attnx.KVCache(4)
    cache.extend(np.ones((5, 4)))
    M8, m8 = np.zeros((3, 4), "M8[s]"), np.zeros((2, 5, 4), "m8[s]")
    return {
        "mask ragged": (lambda: attnx.attend(q, Kb, mask=[[True] * 5, [True] * 4]),
                        ValueError, "mask is not a rectangular array"),
        "mask ragged, one query": (lambda: attnx.attend(q[0, 0], Kb[0], mask=[[True], [1, 2]]),
                                   ValueError, "mask is not a rectangular array"),
        "window a set": (lambda: attnx.attend(q, Kb, window={1, 2}), TypeError,
                         "window must be a pair"),
        "window a dict": (lambda: attnx.attend(q, Kb, window={0: 1, 1: 0}), TypeError,
                          "window must be a pair"),
        "window a 0-d array": (lambda: attnx.attend(q, Kb, window=np.array(2)), TypeError,
                               "window must be a pair"),
        "window a set, varlen": (lambda: varlen(window={1, 2}), TypeError,
                                 "window must be a pair"),
        "query datetime64": (lambda: attnx.attend(M8, Kb), TypeError,
                             "query must hold real numbers"),
        "keys datetime64": (lambda: attnx.attend(q, M8), TypeError,
                            "keys must hold real numbers"),
        "values timedelta64": (lambda: attnx.attend(q, Kb, m8), TypeError,
                               "values must hold real numbers"),
        "dot_score keys timedelta64": (lambda: attnx.dot_score(q, m8), TypeError,
                                       "keys must hold real numbers"),
        "context values datetime64": (lambda: attnx.context(np.ones(3), M8), TypeError,
                                      "values must hold real numbers"),
        "varlen values timedelta64": (lambda: attnx.attend_varlen(qv, kv, kv.astype("m8[s]"),
                                                                  cu_q, cu_k),
                                      TypeError, "values must hold real numbers"),
        "backward grad_out timedelta64": (lambda: bw(grad_out=np.zeros(out.shape, "m8[s]")),
                                          TypeError, "grad_out must hold real numbers"),
        "merge lses datetime64": (lambda: attnx.merge_attention(
            [np.ones(3), np.ones(3)], [np.zeros(()), np.zeros((), "M8[s]")]),
            TypeError, r"lses\[1\] must hold real numbers"),
        "enable_gqa an array": (lambda: attnx.attend(q, Kb, enable_gqa=two), TypeError,
                                "enable_gqa must be a bool"),
        "return_lse an array": (lambda: attnx.attend(q, Kb, return_lse=two), TypeError,
                                "return_lse must be a bool"),
        "return_weights an array": (lambda: attnx.attend(q, Kb, return_weights=two), TypeError,
                                    "return_weights must be a bool"),
        "return_weights an array, one query": (lambda: attnx.attend(q[0, 0], Kb[0],
                                                                    return_weights=two),
                                               TypeError, "return_weights must be a bool"),
        "KVCache.attend return_weights an array": (
            lambda: cache.attend(np.ones(4), return_weights=two), TypeError,
            "return_weights must be a bool"),
        "backward enable_gqa an array": (lambda: bw(enable_gqa=two), TypeError,
                                         "enable_gqa must be a bool"),
        "backward grad_bias an array": (lambda: bw(grad_bias=two, bias=np.zeros(5)), TypeError,
                                        "grad_bias must be a bool"),
        "varlen enable_gqa an array": (lambda: varlen(enable_gqa=two), TypeError,
                                       "enable_gqa must be a bool"),
        "varlen return_lse an array": (lambda: varlen(return_lse=two), TypeError,
                                       "return_lse must be a bool"),
        "varlen backward enable_gqa an array": (lambda: varlen_bw(enable_gqa=two), TypeError,
                                                "enable_gqa must be a bool"),
    }


@pytest.mark.parametrize("case", sorted(_unnamed_cases()))
def test_errors_name_the_argument(case):
    """Each was raised by NumPy or Python before attnx looked at the argument
    (np.asarray, np.result_type, a truth value, a subscript), naming none."""
    call, exc, says = _unnamed_cases()[case]
    with pytest.raises(exc, match="^" + says):
        call()


def test_flags_keep_their_truth_values():
    q, Kb = np.ones((2, 3, 4)), np.ones((2, 5, 4))
    want = attnx.attend(q, Kb, return_weights=True, return_lse=True)
    for yes in (True, 1, np.True_, np.array([True])):
        got = attnx.attend(q, Kb, return_weights=yes, return_lse=yes, enable_gqa=yes)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
    for no in (False, 0, None, np.False_):
        np.testing.assert_array_equal(attnx.attend(q, Kb, return_weights=no, return_lse=no,
                                                   enable_gqa=no), want[0])
    np.testing.assert_array_equal(attnx.attend(q[0, 0], Kb[0], return_weights=0),
                                  attnx.attend(q[0, 0], Kb[0]))
    for window in ((1, 0), [1, 0], np.array([1, 0]), (1, None)):
        np.testing.assert_array_equal(attnx.attend(q, Kb, window=window),
                                      attnx.attend(q, Kb, window=tuple(window)))


# --- attend_backward: out and lse as the forward returned them ----------------

def _forward(dtype, single=False):
    rng = np.random.default_rng(7)
    lead = () if single else (2,)
    q = rng.standard_normal((4,) if single else (2, 3, 4)).astype(dtype)
    Kb = rng.standard_normal(lead + (5, 4)).astype(dtype)
    Vb = rng.standard_normal(lead + (5, 3)).astype(dtype)
    out, lse = attnx.attend(q, Kb, Vb, return_lse=True)
    return np.ones_like(out), q, Kb, Vb, out, lse


@pytest.mark.parametrize("which", ["out", "lse"])
@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.bool_, np.complex128])
@pytest.mark.parametrize("single", [False, True], ids=["rows", "one query"])
def test_backward_out_and_lse_must_be_real_floating(which, dtype, single):
    """An integer lse (say a truncated copy) gave wrong gradients, silently."""
    g, q, Kb, Vb, out, lse = _forward(np.float64, single)
    args = {"out": out, "lse": lse}
    args[which] = np.asarray(args[which]).astype(dtype)
    with pytest.raises(TypeError, match=f"^{which} must be a real floating array") as e:
        attnx.attend_backward(g, q, Kb, Vb, args["out"], args["lse"])
    assert np.dtype(dtype).name in str(e.value)
    if dtype is not np.complex128:      # a nested list of them: the same
        args[which] = args[which].tolist()
        with pytest.raises(TypeError, match=f"^{which} must be a real floating array"):
            attnx.attend_backward(g, q, Kb, Vb, args["out"], args["lse"])


def test_backward_dtype_is_decided_by_grad_out_and_the_operands():
    """out and lse follow the work dtype of grad_out, query, keys and values
    (as the forward's followed query, keys and values): a float64 lse does
    not turn a float32 backward into a float64 one, and a float32 one is
    widened for a float64 backward."""
    g, q, Kb, Vb, out, lse = _forward(np.float32)
    want = attnx.attend_backward(g, q, Kb, Vb, out, lse)
    got = attnx.attend_backward(g, q, Kb, Vb, out.astype(np.float64), lse.astype(np.float64))
    for a, b in zip(got, want):
        assert a.dtype == np.float32
        np.testing.assert_array_equal(a, b)
    g, q, Kb, Vb, out, lse = _forward(np.float64)
    o32, l32 = out.astype(np.float32), lse.astype(np.float32)
    want = attnx.attend_backward(g, q, Kb, Vb, o32.astype(np.float64), l32.astype(np.float64))
    got = attnx.attend_backward(g, q, Kb, Vb, o32, l32)
    for a, b in zip(got, want):
        assert a.dtype == np.float64
        np.testing.assert_array_equal(a, b)
    # a float32 grad_out makes float32 work of float32 operands only
    g, q, Kb, Vb, out, lse = _forward(np.float64)
    assert attnx.attend_backward(g.astype(np.float32), q, Kb, Vb, out, lse)[0].dtype == np.float64
    # an lse that float32 work cannot hold is refused, named
    g, q, Kb, Vb, out, lse = _forward(np.float32)
    with pytest.raises(ValueError, match="^lse holds float64 values beyond the range of "
                       "float32"), np.errstate(over="ignore"):
        attnx.attend_backward(g, q, Kb, Vb, out, np.full(lse.shape, 1e39))


# --- causal with a single query ----------------------------------------------

@pytest.mark.parametrize("kw", [{}, {"return_weights": True}, {"values": K * 2},
                                {"score": "general", "W": np.eye(3)}])
def test_causal_with_one_query_is_refused(kw):
    with pytest.raises(ValueError, match="key 0 only") as e:
        attnx.attend(Q, K, causal=True, **kw)
    assert "query_offset=T - 1" in str(e.value) and "causal=False" in str(e.value)


def test_causal_with_query_rows_still_top_left():
    # (1, d) rows are PyTorch's is_causal: row 0 sees key 0, by definition
    ctx = attnx.attend(Q[None], K, causal=True)
    np.testing.assert_allclose(ctx[0], K[0], rtol=1e-15)
    # the message's recipe: a lone query at the last position sees every key,
    # as does the lower-right mask
    Lq, T = 1, len(K)
    lower_right = np.tril(np.ones((Lq, T), bool), T - Lq)
    want = attnx.attend(Q, K)
    np.testing.assert_array_equal(attnx.attend(Q[None], K, mask=lower_right)[0], want)
    np.testing.assert_array_equal(attnx.attend(Q, K, causal=True, query_offset=T - 1), want)
    np.testing.assert_array_equal(attnx.attend(Q[None], K, causal=True, query_offset=T - Lq)[0],
                                  want)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("bad", ["", 0.0, [], (), np.float64(0), 0.5, "upper",
                                 np.array([True, False]), np.array(False)],
                         ids=repr)
def test_causal_is_checked_on_the_fast_path_too(dtype, bad):
    """A (d,) float query took a fast path that read any falsy causal as
    False; the same value with (1, d) rows was refused, naming causal."""
    q, Kc = Q.astype(dtype), K.astype(dtype)
    with pytest.raises((TypeError, ValueError), match="^causal must be") as rows:
        attnx.attend(q[None], Kc, causal=bad)
    with pytest.raises(type(rows.value), match="^causal must be"):
        attnx.attend(q, Kc, causal=bad)


@pytest.mark.parametrize("ok", [False, None, 0, np.False_, np.int64(0)], ids=repr)
def test_causal_values_meaning_false_give_the_fast_paths_bits(ok):
    for dtype in (np.float64, np.float32):
        q, Kc = Q.astype(dtype), K.astype(dtype)
        np.testing.assert_array_equal(attnx.attend(q, Kc, causal=ok), attnx.attend(q, Kc))


# --- KVCache: pickle, generic, signature -------------------------------------

@pytest.mark.parametrize("dv,dtype", [(None, np.float64), (2, np.float64), (2, np.float32)])
def test_kvcache_pickles_its_rows(dv, dtype):
    c = attnx.KVCache(3, dv, capacity=100, dtype=dtype)
    rng = np.random.default_rng(1)
    for _ in range(5):
        c.append(rng.standard_normal(3), None if dv is None else rng.standard_normal(dv))
    for clone in (pickle.loads(pickle.dumps(c)), copy.deepcopy(c), copy.copy(c)):
        assert len(clone) == 5 and clone.capacity == 5          # the filled part only
        assert (clone.d, clone.dv, clone.shared, clone.dtype) == (c.d, c.dv, c.shared, c.dtype)
        np.testing.assert_array_equal(clone.keys, c.keys)
        np.testing.assert_array_equal(clone.values, c.values)
        np.testing.assert_array_equal(clone.attend(np.ones(3)), c.attend(np.ones(3)))
        clone.append(np.ones(3), None if dv is None else np.ones(dv))      # still usable
        assert len(clone) == 6 and len(c) == 5
    empty = pickle.loads(pickle.dumps(attnx.KVCache(4)))
    assert len(empty) == 0 and empty.d == 4


def test_kvcache_subscript_is_a_generic_alias():
    alias = attnx.KVCache[np.float32]
    assert alias.__origin__ is attnx.KVCache and alias.__args__ == (np.float32,)
    c = alias(3, dtype=np.float32)
    assert isinstance(c, attnx.KVCache) and c.dtype == np.float32


def _public_callables():
    out = []
    for name in attnx.__all__:
        obj = getattr(attnx, name)
        if callable(obj):
            out.append((name, obj))
    for name, obj in vars(attnx.KVCache).items():
        if not name.startswith("_") and callable(obj):
            out.append((f"KVCache.{name}", getattr(attnx.KVCache, name)))
    return out


@pytest.mark.parametrize("name,obj", _public_callables(), ids=lambda x: x if isinstance(x, str) else "")
def test_every_public_callable_has_a_signature(name, obj):
    sig = inspect.signature(obj)        # raises ValueError where there is none
    kinds = {p.kind for p in sig.parameters.values()}
    assert inspect.Parameter.VAR_POSITIONAL not in kinds, (name, sig)


def test_kvcache_signature_matches_its_init():
    sig = inspect.signature(attnx.KVCache)
    assert list(sig.parameters) == ["d", "dv", "capacity", "dtype"]
    assert sig.parameters["capacity"].kind is inspect.Parameter.KEYWORD_ONLY
    # the signature is the truth: binding its defaults builds a cache
    bound = sig.bind(4)
    bound.apply_defaults()
    c = attnx.KVCache(*bound.args, **bound.kwargs)
    assert c.capacity == sig.parameters["capacity"].default and c.dtype == np.float64


# --- long double: computed and returned in float64, documented ---------------

def test_longdouble_is_computed_in_float64():
    ql, Kl = Q.astype(np.longdouble), K.astype(np.longdouble)
    ctx, w = attnx.attend(ql, Kl, return_weights=True)
    assert ctx.dtype == np.float64 and w.dtype == np.float64
    want_ctx, want_w = attnx.attend(Q, K, return_weights=True)
    np.testing.assert_array_equal(ctx, want_ctx)
    np.testing.assert_array_equal(w, want_w)
    assert attnx.softmax(Kl).dtype == np.float64


def test_longdouble_is_documented():
    import os
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    docs = [os.path.join(root, "README.md"), os.path.join(root, "docs", "failure-model.md")]
    if not all(os.path.exists(p) for p in docs):
        pytest.skip("not a source checkout")
    for path in docs:
        text = open(path).read()
        assert "longdouble" in text and "float64" in text, path


def test_softmax_default_axis_differs_from_scipy_and_the_docs_say_so():
    scipy_special = pytest.importorskip("scipy.special")
    x = np.arange(6.0).reshape(2, 3)
    np.testing.assert_allclose(attnx.softmax(x), scipy_special.softmax(x, axis=-1), rtol=1e-15)
    np.testing.assert_allclose(attnx.softmax(x, axis=None), scipy_special.softmax(x), rtol=1e-15)
    assert not np.allclose(attnx.softmax(x), scipy_special.softmax(x))   # the defaults differ
    for f in (attnx.softmax, attnx.log_softmax):
        doc = " ".join(f.__doc__.split())
        assert "default is None" in doc and "(-1)" in doc, f.__name__
    import os
    readme = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
    if os.path.exists(readme):
        text = " ".join(open(readme).read().split())
        assert "Default axis -1, not SciPy's None" in text
        assert "`scipy.special.softmax(x)` defaults to `axis=None`" in text
