import numpy as np
import pytest

from ccmc_estim import _columns
from ccmc_estim._columns import build_columns, columns_from_stats
from ccmc_estim._kernels import RANK_SORT_MAX
from ccmc_estim._stats import check_outputs, flatten_prompts, prompt_stats, validate_prompts


def _same(a, b):
    for f in ("indptr", "tokens", "counts", "query"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert a.n_tokens == b.n_tokens


def test_statistics_by_hand():
    s = prompt_stats([[2, 0, 2, 1], [1, 1], [3]], n_tokens=5)
    np.testing.assert_array_equal(s.indptr, [0, 3, 4, 5])
    np.testing.assert_array_equal(s.tokens, [0, 1, 2, 1, 3])
    np.testing.assert_array_equal(s.counts, [1, 1, 2, 2, 1])
    np.testing.assert_array_equal(s.query, [1, 1, 3])
    assert s.tokens.dtype == np.int32 and s.query.dtype == np.int32
    order, col_ptr = s.by_query
    np.testing.assert_array_equal(order, [0, 1, 2])
    np.testing.assert_array_equal(col_ptr, [0, 0, 2, 2, 3, 3])


def test_input_forms_agree(rng):
    arr = rng.integers(0, 7, size=(50, 9))
    forms = [
        arr,
        arr.tolist(),
        tuple(map(tuple, arr.tolist())),
        list(arr),
        np.array([*list(arr), None], dtype=object)[:-1],
        arr.astype(np.float64),
        arr.astype(np.int16),
    ]
    ref = prompt_stats(arr)
    for form in forms:
        _same(ref, prompt_stats(form))
    # Ragged arrays of signed and unsigned 64-bit ids, which numpy joins as floats: the same
    # integer tokens.
    ragged = [p[: 1 + i % 9] for i, p in enumerate(arr)]
    mixed = [p.astype(np.uint64 if i % 2 else np.int64) for i, p in enumerate(ragged)]
    assert flatten_prompts(mixed)[0].dtype.kind in "iu"  # never through floats
    flat = validate_prompts(mixed)[0]
    assert flat.dtype == np.int32
    np.testing.assert_array_equal(flat, np.concatenate(ragged))
    _same(prompt_stats(ragged), prompt_stats(mixed))


def test_ragged_matches_per_prompt(rng):
    prompts = [rng.integers(0, 6, size=rng.integers(1, 12)) for _ in range(40)]
    s = prompt_stats(prompts, n_tokens=6)
    for i, p in enumerate(prompts):
        toks, cnt = np.unique(p, return_counts=True)
        seg = slice(s.indptr[i], s.indptr[i + 1])
        np.testing.assert_array_equal(s.tokens[seg], toks)
        np.testing.assert_array_equal(s.counts[seg], cnt)
        assert s.query[i] == p[-1]


def test_many_distinct_tokens_sorted(rng):
    # Up to RANK_SORT_MAX distinct tokens a prompt's are sorted by rank, more by heapsort:
    # both must give the sorted histogram, in the statistics and in the column layout.
    K = 500
    prompts = [rng.integers(0, K, size=n) for n in (1, 2, 40, 63, 64, 65, 66, 67, 90, 400)]
    distinct = [np.unique(p).size for p in prompts]
    assert min(distinct) < RANK_SORT_MAX < max(distinct)
    assert RANK_SORT_MAX in distinct or RANK_SORT_MAX + 1 in distinct
    s = prompt_stats(prompts, n_tokens=K)
    flat, indptr, _ = validate_prompts(prompts, n_tokens=K)
    cd = build_columns(flat, indptr, K, None, np.ones(len(prompts)))
    for i, p in enumerate(prompts):
        toks, cnt = np.unique(p, return_counts=True)
        np.testing.assert_array_equal(s.tokens[s.indptr[i] : s.indptr[i + 1]], toks)
        np.testing.assert_array_equal(s.counts[s.indptr[i] : s.indptr[i + 1]], cnt)
        r = np.flatnonzero(cd.rows == i)[0]
        q = p[-1]
        ids = cd.id_tokens[cd.id_ptr[q] + cd.local[cd.indptr[r] : cd.indptr[r + 1]]]
        np.testing.assert_array_equal(ids, toks)
        np.testing.assert_array_equal(cd.count[cd.indptr[r] : cd.indptr[r + 1]], cnt)
    for q in range(K):  # every column's identified tokens sorted, up to 400 of them
        ids = cd.id_tokens[cd.id_ptr[q] : cd.id_ptr[q + 1]]
        assert (np.diff(ids) > 0).all()


@pytest.mark.parametrize("n_dist", [1, 20, 100])
@pytest.mark.parametrize("n_jobs", [1, 2])
def test_sentinel_laid_out_in_place(rng, monkeypatch, n_jobs, n_dist):
    # The mixture's sentinel (token K, never in the prompts) is laid out as if every prompt
    # began with it: the same layout as of the prompts with it prepended, also for prompts
    # with more distinct tokens than the rank sort takes, at distance weights (fewer than
    # some prompts' lengths, as many as any), with outputs on the sentinel, and column by
    # column on several threads.
    K = 300
    prompts = [rng.integers(0, K, size=n) for n in rng.integers(1, 90, size=400)]
    flat, indptr, _ = validate_prompts(prompts, n_tokens=K)
    y = np.array([p[rng.integers(p.size)] if rng.random() < 0.7 else K for p in prompts])
    w = rng.uniform(0.5, 2.0, len(prompts)) * (rng.random(len(prompts)) < 0.9)
    dist = np.exp(-0.1 * np.arange(n_dist))
    monkeypatch.setattr(_columns, "THREAD_MIN_WORK", 0)  # several threads on small data
    with_s = [np.concatenate([[K], p]) for p in prompts]
    flat_s, indptr_s, _ = validate_prompts(with_s, n_tokens=K + 1)
    ref = build_columns(flat_s, indptr_s, K + 1, y, w, dist_weight=dist)
    cd = build_columns(flat, indptr, K + 1, y, w, dist_weight=dist, sentinel=True,
                       n_jobs=n_jobs)
    for name in ("col_ptr", "indptr", "local", "count", "y_entry", "weight", "id_ptr",
                 "id_tokens", "rows"):
        np.testing.assert_array_equal(getattr(cd, name), getattr(ref, name))
    assert (cd.id_tokens[cd.id_ptr[1:][np.diff(cd.id_ptr) > 0] - 1] == K).all()
    # An uncounted token (the mixture's unknown one) keeps its entries, at a count of 0.
    unk = int(flat[0])
    zero = build_columns(flat, indptr, K + 1, y, w, dist_weight=dist, sentinel=True,
                         n_jobs=n_jobs, uncounted=unk)
    column = np.repeat(np.repeat(np.arange(K + 1), np.diff(ref.col_ptr)), np.diff(ref.indptr))
    token = ref.id_tokens[ref.id_ptr[column] + ref.local]  # of every entry
    np.testing.assert_array_equal(zero.count, np.where(token == unk, 0.0, ref.count))
    assert (token == unk).sum() > 10
    for name in ("indptr", "local", "id_tokens"):
        np.testing.assert_array_equal(getattr(zero, name), getattr(ref, name))
    # Compiled code does not check bounds: a sentinel in the prompts, or an uncounted token
    # outside them, is refused.
    with pytest.raises(ValueError, match="sentinel"):
        build_columns(flat_s, indptr_s, K + 1, y, w, sentinel=True)
    with pytest.raises(ValueError, match="uncounted"):
        build_columns(flat, indptr, K + 1, y, w, sentinel=True, uncounted=K)


def test_permuting_non_last_tokens_keeps_statistics(rng):
    p = rng.integers(0, 9, size=20)
    q = np.concatenate([rng.permutation(p[:-1]), p[-1:]])
    _same(prompt_stats([p]), prompt_stats([q]))


def test_column_layout(rng):
    prompts = rng.integers(0, 5, size=(30, 6))
    outputs = prompts[np.arange(30), rng.integers(0, 6, size=30)]
    flat, indptr, K = validate_prompts(prompts)
    cd = build_columns(flat, indptr, K, outputs, np.ones(30))
    # The layout is the prompts' histograms regrouped by query, and the same from statistics.
    s = prompt_stats(prompts)
    same = columns_from_stats(s, outputs, np.ones(30))
    for name in ("col_ptr", "indptr", "local", "count", "y_entry", "id_ptr", "id_tokens"):
        np.testing.assert_array_equal(getattr(cd, name), getattr(same, name))
    order = np.argsort(prompts[:, -1], kind="stable")
    for r, i in enumerate(order):
        q = prompts[i, -1]
        assert cd.col_ptr[q] <= r < cd.col_ptr[q + 1]
        toks = cd.id_tokens[cd.id_ptr[q] + cd.local[cd.indptr[r] : cd.indptr[r + 1]]]
        vals, counts = np.unique(prompts[i], return_counts=True)
        np.testing.assert_array_equal(toks, vals)
        np.testing.assert_allclose(cd.count[cd.indptr[r] : cd.indptr[r + 1]], counts)
        assert toks[cd.y_entry[r] - cd.indptr[r]] == outputs[i]
    mask = np.zeros((5, 5), bool)
    for p in prompts:
        mask[p, p[-1]] = True
    np.testing.assert_array_equal(cd.to_dense(np.ones(cd.n_params, bool)), mask)
    np.testing.assert_array_equal(cd.to_csc(np.ones(cd.n_params, bool)).toarray(), mask)


@pytest.mark.parametrize(
    "prompts, match",
    [
        ([[0, 1], []], "prompt 1 is empty"),
        (np.zeros((3, 0), int), "prompt 0 is empty"),
        ([], "prompts is empty"),
        ([[0, -1, 2]], "prompt 0 has a negative token -1 at position 1"),
        ([[0, 1], [2, 1.5]], "non-integer token 1.5"),
        ([[0, 1], [np.nan, 1]], "NaN or infinity"),
        ([[0, 1], [2, [3, 4]]], "prompt 1"),
        (np.zeros((2, 3, 4), int), "3 dimension"),
        (np.array([1, 2, 3]), "1 dimension"),
        ([[0, 1], 3], "prompt 1 is a scalar"),
        ([[0, 1], [[1, 2], [3, 4]]], "prompt 1 must be a flat 1-D"),
        ([np.array([0, 1]), np.array([2**63 + 5], np.uint64)],
         "prompt 1 contains token 9223372036854775813 at index \\(0,\\), beyond"),
    ],
)
def test_bad_prompts(prompts, match):
    with pytest.raises(ValueError, match=match):
        prompt_stats(prompts)


def test_bad_prompt_types():
    with pytest.raises(TypeError):
        prompt_stats("abc")
    with pytest.raises(TypeError):
        prompt_stats(5)
    with pytest.raises(TypeError, match="booleans"):
        prompt_stats(np.ones((2, 2), bool))
    with pytest.raises(TypeError, match="dtype"):
        prompt_stats([["a", "b"]])


def test_token_outside_vocabulary():
    with pytest.raises(ValueError, match="prompt 1 has token 5 at position 0.*n_tokens=5"):
        prompt_stats([[0, 1], [5, 1]], n_tokens=5)


def test_bad_outputs():
    with pytest.raises(ValueError, match="got 3 prompts but 2 outputs"):
        check_outputs([0, 1], 3, 4)
    with pytest.raises(ValueError, match="output 7 of sample 1"):
        check_outputs([0, 7, 1], 3, 4)
    with pytest.raises(ValueError, match="non-integer"):
        check_outputs([0, 1.5, 1], 3, 4)
    with pytest.raises(ValueError, match="NaN or infinity"):
        check_outputs([0, np.nan, 1], 3, 4)
    with pytest.raises(ValueError, match="1-D"):
        check_outputs([[0, 1, 1]], 3, 4)
    with pytest.raises(ValueError, match="negative|outside"):
        check_outputs([0, -1, 1], 3, 4)


@pytest.mark.parametrize("n_jobs", [2, 3, 7])
def test_column_layout_threads_give_the_same_layout(rng, monkeypatch, n_jobs):
    """Disjoint column ranges laid out by several threads: the same arrays, bit for bit."""
    monkeypatch.setattr(_columns, "THREAD_MIN_WORK", 0)
    prompts = [rng.integers(0, 9, size=rng.integers(1, 12)) for _ in range(400)]
    outputs = np.array([rng.choice(p) for p in prompts])
    weight = rng.uniform(0, 2, size=400) * (rng.random(400) > 0.1)
    flat, indptr, K = validate_prompts(prompts, 11)
    one = build_columns(flat, indptr, K, outputs, weight)
    many = build_columns(flat, indptr, K, outputs, weight, n_jobs=n_jobs)
    for name in ("col_ptr", "indptr", "local", "count", "y_entry", "id_ptr", "id_tokens",
                 "weight", "rows"):
        np.testing.assert_array_equal(getattr(one, name), getattr(many, name))
