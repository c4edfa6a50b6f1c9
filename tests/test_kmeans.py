"""Cosine k-means with k-means++ seeding (hgmcli/kmeans.py): the paper's
KMEANS(S, k) — exact recovery of distinct patches (Lemma 7), the seedings
(greedy k-means++, k-means||, init auto), backend agreement and the backend
registry, determinism, bounded-memory chunking and streaming, empty clusters,
errors, and the multi-process (gloo) run equal to the single-process one."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from hgmcli import kmeans
from hgmcli.errors import ConfigError, DataError, HgmError
from hgmcli.kmeans import assign, kmeanspp_init, normalize_rows, pick_backend, shard_for_rank, spherical_kmeans

HAS_FAISS = "faiss" in kmeans.available_backends()
needs_faiss = pytest.mark.skipif(not HAS_FAISS, reason="faiss is not installed (pip install faiss-cpu)")
BACKENDS = ["torch", pytest.param("faiss", marks=[pytest.mark.faiss, needs_faiss])]


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    return normalize_rows(rng.standard_normal((n, d)).astype(np.float32))


def repeated(rng, distinct: np.ndarray, low: int, high: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row of ``distinct`` repeated low..high times, shuffled: (x, true ids)."""
    ids = np.repeat(np.arange(len(distinct)), rng.integers(low, high + 1, len(distinct)))
    ids = rng.permutation(ids)
    return distinct[ids], ids


def blobs(rng, centers: int, n: int, d: int, spread: float) -> tuple[np.ndarray, np.ndarray]:
    c = unit(rng, centers, d)
    ids = rng.integers(0, centers, n)
    return normalize_rows(c[ids] + spread * rng.standard_normal((n, d)).astype(np.float32)), ids


def is_bijection(labels: np.ndarray, ids: np.ndarray) -> bool:
    pairs = set(zip(ids.tolist(), labels.tolist()))
    return len(pairs) == len(set(ids.tolist())) == len(set(labels.tolist()))


# ---------------------------------------------------------------- the paper's guarantees


@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_recovery_one_cluster_per_distinct_patch(backend):
    rng = np.random.default_rng(0)
    x, ids = repeated(rng, unit(rng, 40, 16), 5, 20)
    result = spherical_kmeans(x, 40, backend=backend, device="cpu", seed=1)
    labels, sims = assign(x, result.centroids, device="cpu")
    assert is_bijection(labels, ids)
    assert np.allclose(sims, 1.0, atol=1e-5)
    assert result.objective[-1] == pytest.approx(0.0, abs=1e-6)
    assert sorted(result.sizes.tolist()) == sorted(np.bincount(ids).tolist())
    assert np.allclose(np.linalg.norm(result.centroids, axis=1), 1.0, atol=1e-6)


def test_kmeanspp_never_picks_a_point_or_a_duplicate_twice():
    rng = np.random.default_rng(1)
    distinct = unit(rng, 30, 8)
    idx = kmeanspp_init(torch.from_numpy(distinct), 30, torch.Generator().manual_seed(0))
    assert sorted(idx.tolist()) == list(range(30))  # |S| clusters of |S| points: one center each
    x, ids = repeated(rng, distinct, 3, 9)
    for seed in range(5):
        idx = kmeanspp_init(torch.from_numpy(x), 30, torch.Generator().manual_seed(seed), chunk_size=17)
        assert sorted(ids[idx.numpy()].tolist()) == list(range(30))


def test_kmeanspp_falls_back_to_uniform_when_fewer_distinct_points_than_k():
    rng = np.random.default_rng(2)
    x, ids = repeated(rng, unit(rng, 5, 8), 4, 4)  # 20 points, 5 distinct
    idx = kmeanspp_init(torch.from_numpy(x), 12, torch.Generator().manual_seed(0))
    assert len(set(idx.tolist())) == 12  # never the same point twice
    assert set(ids[idx[:5].numpy()].tolist()) == set(range(5))  # the distinct ones first


def test_kmeanspp_seeding_beats_random_seeding_on_separated_blobs():
    rng = np.random.default_rng(3)
    x, _ = blobs(rng, 50, 5000, 16, 0.02)
    for iterations in (0, 1):
        pp = [spherical_kmeans(x, 50, iterations=iterations, seed=s, backend="torch").objective[-1] for s in range(4)]
        rnd = [
            spherical_kmeans(x, 50, iterations=iterations, init="random", seed=s, backend="torch").objective[-1]
            for s in range(4)
        ]
        assert np.mean(pp) < 0.5 * np.mean(rnd), (iterations, pp, rnd)


def test_greedy_seeding_finds_every_blob_where_plain_seeding_can_miss():
    """Lemma 6's "highly clustered" regime, but with blobs only a few spreads
    apart: plain D² sampling sometimes puts two seeds in one blob and Lloyd
    cannot undo it; the greedy variant (2 + ln k candidates) finds all."""
    rng = np.random.default_rng(5)
    x, ids = blobs(rng, 40, 8000, 16, 0.03)
    found = {}
    for trials in (1, None):
        found[trials] = [
            is_bijection(assign(x, spherical_kmeans(x, 40, iterations=10, seed=s, seed_trials=trials,
                                                    backend="torch").centroids)[0], ids)
            for s in range(6)
        ]
    assert all(found[None]), found
    assert not all(found[1]), found  # the case the greedy variant is for


def test_kmeans_parallel_finds_every_blob_where_plain_seeding_can_miss():
    """k-means|| (5 rounds of ~2k candidates, then weighted greedy k-means++)
    finds the 40 blobs of the test above from every seed, on all points and on
    a uniform subsample of 100 points per centroid. (Measured over seeds 0-19
    with no Lloyd step: k-means|| misses a blob for 1 seed, on all points or on
    the subsample, greedy k-means++ for 3, plain D² sampling for 19.)"""
    rng = np.random.default_rng(5)
    x, ids = blobs(rng, 40, 8000, 16, 0.03)
    for per_centroid in (None, 100):
        for s in range(6):
            r = spherical_kmeans(x, 40, iterations=10, seed=s, init="kmeans||", backend="torch",
                                 seed_points_per_centroid=per_centroid)
            assert is_bijection(assign(x, r.centroids)[0], ids), (per_centroid, s)
            assert r.stats["init_used"] == "kmeans||" and r.stats["seed_rounds"] == 5
            assert r.stats["seed_points"] == (8000 if per_centroid is None else 4000)
            assert r.stats["seed_candidates"] >= 40


@pytest.mark.parametrize("init", ["auto", "kmeans||"])
def test_exact_recovery_on_orthonormal_patches(init):
    """Lemma 7's setting: distinct patches mutually orthogonal, each repeated;
    one cluster per distinct patch. ``auto`` picks greedy k-means++ here (N·k small)."""
    rng = np.random.default_rng(14)
    q = np.linalg.qr(rng.standard_normal((64, 64)))[0].astype(np.float32)  # orthonormal rows
    x, ids = repeated(rng, q[:48], 3, 30)
    r = spherical_kmeans(x, 48, iterations=5, init=init, backend="torch", seed=2)
    assert r.stats["init_used"] == ("kmeans++" if init == "auto" else "kmeans||")
    assert is_bijection(assign(x, r.centroids)[0], ids)
    assert r.objective[-1] == pytest.approx(0.0, abs=1e-6) and r.objective[0] == pytest.approx(0.0, abs=1e-6)


def test_init_auto_picks_by_the_size_of_the_job(monkeypatch):
    x, _ = blobs(np.random.default_rng(15), 20, 3000, 8, 0.3)
    small = spherical_kmeans(x, 16, iterations=2, init="auto", backend="torch")
    assert small.stats["init_used"] == "kmeans++" and small.stats["seed_points"] == 3000
    assert small.stats["seeding"].startswith("greedy k-means++ (4 candidates per step) on 3,000 points")
    monkeypatch.setattr(kmeans, "AUTO_GREEDY_MAX_NK", 3000 * 16 - 1)
    big = spherical_kmeans(x, 16, iterations=2, init="auto", backend="torch", seed_points_per_centroid=100)
    assert big.stats["init_used"] == "kmeans||" and big.stats["seed_points"] == 1600
    assert big.stats["seeding"].startswith("k-means|| (5 rounds, ")
    assert kmeans.pick_init("auto", 10, 3) == "kmeans++" and kmeans.pick_init("random", 10**9, 10**3) == "random"


def test_kmeans_parallel_with_fewer_distinct_points_than_k():
    rng = np.random.default_rng(16)
    x, _ = repeated(rng, unit(rng, 5, 8), 4, 4)  # 20 points, 5 distinct
    r = spherical_kmeans(x, 12, iterations=3, init="kmeans||", backend="torch")
    assert r.objective[0] == pytest.approx(0.0, abs=1e-6)  # the 5 distinct points are seeds
    assert r.sizes.sum() == 20 and r.stats["seed_candidates"] >= 12
    r = spherical_kmeans(x, 20, iterations=3, init="kmeans||", backend="torch")
    assert r.stats["seed_candidates"] == 20 and r.objective[0] == pytest.approx(0.0, abs=1e-6)


def test_restarts_keep_the_best_run():
    rng = np.random.default_rng(6)
    x, _ = blobs(rng, 30, 3000, 8, 0.2)
    r = spherical_kmeans(x, 30, iterations=5, seed=0, seed_trials=1, restarts=3, backend="torch")
    assert r.stats["restarts"] == 3 and r.objective[-1] == min(r.stats["restart_objectives"])
    single = spherical_kmeans(x, 30, iterations=5, seed=0, seed_trials=1, backend="torch")
    assert single.objective[-1] == r.stats["restart_objectives"][0]


# ---------------------------------------------------------------- backends and numerics


@pytest.mark.faiss
@needs_faiss
def test_faiss_and_torch_reach_the_same_objective():
    rng = np.random.default_rng(4)
    x, _ = blobs(rng, 100, 20000, 27, 0.3)
    t = spherical_kmeans(x, 64, iterations=10, backend="torch", seed=0)
    f = spherical_kmeans(x, 64, iterations=10, backend="faiss", seed=0)
    assert t.objective[0] == pytest.approx(f.objective[0], rel=1e-5)  # same seeds
    assert f.objective[-1] == pytest.approx(t.objective[-1], rel=0.01)
    assert len(f.objective) == 11 and f.stats["subsampled_to"] is None
    assert f.sizes.sum() == t.sizes.sum() == 20000


@pytest.mark.faiss
@needs_faiss
def test_faiss_backend_prints_nothing(capfd):
    x = unit(np.random.default_rng(5), 300, 8)  # far fewer than FAISS's 39 points per centroid
    spherical_kmeans(x, 50, iterations=3, backend="faiss")
    assert capfd.readouterr() == ("", "")


def test_objective_is_non_increasing_and_starts_after_seeding():
    rng = np.random.default_rng(6)
    x, _ = blobs(rng, 30, 6000, 12, 0.4)
    r = spherical_kmeans(x, 32, iterations=15, backend="torch", seed_trials=1)  # plain D², as kmeanspp_init
    seeds = x[kmeanspp_init(torch.from_numpy(x), 32, torch.Generator().manual_seed(0)).numpy()]
    assert r.objective[0] == pytest.approx(1 - assign(x, seeds)[1].mean(dtype=np.float64), abs=1e-6)
    assert all(b <= a + 1e-7 for a, b in zip(r.objective, r.objective[1:]))
    assert len(r.objective) == r.stats["iterations"] + 1
    assert r.objective[-1] == pytest.approx(1 - assign(x, r.centroids)[1].mean(dtype=np.float64), abs=1e-6)
    assert r.sizes.tolist() == np.bincount(assign(x, r.centroids)[0], minlength=32).tolist()


def test_same_seed_same_centroids_other_seed_other_centroids():
    x, _ = blobs(np.random.default_rng(7), 20, 3000, 10, 0.5)
    a = spherical_kmeans(x, 16, seed=3, backend="torch", device="cpu")
    b = spherical_kmeans(x, 16, seed=3, backend="torch", device="cpu")
    c = spherical_kmeans(x, 16, seed=4, backend="torch", device="cpu")
    assert np.array_equal(a.centroids, b.centroids) and a.objective == b.objective
    assert not np.array_equal(a.centroids, c.centroids)


def test_chunk_size_does_not_change_the_result():
    x, _ = blobs(np.random.default_rng(8), 20, 500, 10, 0.5)
    a = spherical_kmeans(x, 16, iterations=8, backend="torch")
    b = spherical_kmeans(x, 16, iterations=8, backend="torch", chunk_size=7)
    assert np.allclose(a.centroids, b.centroids, atol=1e-6)
    assert a.sizes.tolist() == b.sizes.tolist()
    assert b.stats["chunk_size"] == 7


@pytest.mark.parametrize("init", ["kmeans++", "kmeans||"])
def test_streaming_from_host_in_small_chunks_equals_the_unchunked_run(init):
    """The torch backend's streamed pass (two staging buffers; pinned with async
    copies on CUDA) forced on the CPU with a tiny chunk: the same result."""
    x, _ = blobs(np.random.default_rng(8), 20, 500, 10, 0.5)
    sample = {"seed_points_per_centroid": 10} if init == "kmeans||" else {}  # seeds on a 160-point subset view
    a = spherical_kmeans(x, 16, iterations=8, init=init, backend="torch", **sample)
    b = spherical_kmeans(x, 16, iterations=8, init=init, backend="torch", chunk_size=7, stream=True, **sample)
    assert b.stats["streamed"] and not a.stats["streamed"] and b.stats["device"] == "cpu (streamed from host)"
    np.testing.assert_allclose(a.centroids, b.centroids, atol=1e-6)
    assert a.sizes.tolist() == b.sizes.tolist()
    np.testing.assert_allclose(a.objective, b.objective, atol=1e-7)


def test_the_cpu_nearest_centroid_is_torch_max_first_index_on_ties():
    """The CPU search's argmax (two amax, no max-with-indices) gives torch.max's answer:
    the largest similarity and the first column holding it, on ties, ±0 and zero rows."""
    rng = np.random.default_rng(11)
    sims = torch.from_numpy(rng.standard_normal((300, 40)).astype(np.float32))
    sims[:50] = torch.round(sims[:50])  # many ties
    sims[50:60] = 0.0  # a zero row: every column ties
    sims[60, [3, 7]] = torch.tensor([0.0, -0.0])  # -0.0 equals 0.0
    sims[60, sims[60] > 0] = -1.0
    sims[61, 5] = sims[61, 6] = sims[61].max() + 1e-6  # two columns one ulp-ish above the rest
    expected = sims.max(dim=1)
    best, first = kmeans._first_max(sims.clone(), torch.arange(40, dtype=torch.float32))
    assert torch.equal(best, expected.values) and torch.equal(first, expected.indices)
    assert first[60] == 3 and first[61] == 5 and first[50:60].eq(0).all()


def test_the_plain_max_search_gives_the_same_clustering(monkeypatch):
    """CUDA (and k beyond float32's exact column numbers) search with torch's own
    max(dim=1); forced here on the CPU, it clusters exactly as the two-amax path."""
    x, _ = blobs(np.random.default_rng(13), 20, 3000, 10, 0.5)
    a = spherical_kmeans(x, 16, iterations=6, init="kmeans||", seed_points_per_centroid=50, backend="torch")
    monkeypatch.setattr(kmeans, "_FIRST_MAX_K", 0)
    b = spherical_kmeans(x, 16, iterations=6, init="kmeans||", seed_points_per_centroid=50, backend="torch")
    assert np.array_equal(a.centroids, b.centroids) and a.objective == b.objective
    assert a.sizes.tolist() == b.sizes.tolist()


def test_lloyd_stops_at_a_fixed_point_and_says_so():
    """Once no assignment changes, the update leaves the centroids where they are:
    Lloyd stops there, and more iterations change nothing."""
    x, _ = blobs(np.random.default_rng(12), 6, 600, 8, 0.2)
    r = spherical_kmeans(x, 6, iterations=100, backend="torch", device="cpu")
    assert r.stats["converged"] and r.stats["iterations"] < 100
    labels = assign(x, r.centroids)[0]
    sums = np.zeros((6, 8))
    np.add.at(sums, labels, x.astype(np.float64))
    np.testing.assert_allclose(normalize_rows(sums.astype(np.float32)), r.centroids, atol=1e-6)
    longer = spherical_kmeans(x, 6, iterations=r.stats["iterations"] + 5, backend="torch", device="cpu")
    assert np.array_equal(longer.centroids, r.centroids) and longer.objective == r.objective


def test_the_input_is_not_copied_when_its_rows_are_unit():
    x, _ = blobs(np.random.default_rng(17), 5, 300, 6, 0.3)
    xt, _, _ = kmeans._prepare(x, 4, kmeans._Comm(), torch.device("cpu"))
    assert xt.data_ptr() == x.ctypes.data  # used in place
    xt, _, _ = kmeans._prepare(2 * x, 4, kmeans._Comm(), torch.device("cpu"))
    np.testing.assert_allclose(xt.numpy(), x, atol=1e-6)  # normalised, in a copy


# ---------------------------------------------------------------- the backend registry


class NumpyPoints(kmeans.Points):
    """The smallest backend: a searcher in numpy."""

    def searcher(self, centroids):
        c = centroids.numpy()

        def search(xc):
            s = xc.numpy() @ c.T  # (m, k)
            lab = s.argmax(axis=1)
            return torch.from_numpy(s[np.arange(len(s)), lab]), torch.from_numpy(lab)

        return search


def test_a_registered_backend_is_used(monkeypatch):
    monkeypatch.setitem(kmeans.KMEANS_BACKENDS, "numpy", NumpyPoints)
    x, _ = blobs(np.random.default_rng(18), 20, 2000, 8, 0.3)
    for init in ("kmeans++", "kmeans||"):
        mine = spherical_kmeans(x, 16, iterations=5, init=init, backend="numpy", seed=1)
        ref = spherical_kmeans(x, 16, iterations=5, init=init, backend="torch", seed=1)
        assert mine.stats["backend"] == "numpy" and mine.stats["device"] == "cpu"
        np.testing.assert_allclose(mine.centroids, ref.centroids, atol=1e-5)
        np.testing.assert_allclose(mine.objective, ref.objective, atol=1e-6)
    assert pick_backend("auto", torch.device("cpu")) == "torch"  # appended: auto's preference unchanged


def test_registries_name_the_config_choices():
    assert kmeans.BACKENDS == ("auto", "torch", "faiss")
    assert kmeans.INITS == ("auto", "kmeans++", "kmeans||", "random")
    assert set(kmeans.SEED_POINTS_PER_CENTROID) == set(kmeans.SEEDINGS)


def test_empty_clusters_are_reseeded_and_none_is_left_empty():
    rng = np.random.default_rng(9)
    # 40 distinct points, 10 of them repeated 100 times: random seeds hit the same
    # point several times, and the copies of a seed leave all but one empty.
    distinct = unit(rng, 40, 8)
    x = rng.permutation(np.concatenate([np.repeat(distinct[:10], 100, axis=0), distinct[10:]]))
    r = spherical_kmeans(x, 40, init="random", iterations=5, backend="torch", seed=0)
    assert r.stats["empty_reseeded"] > 0
    assert (r.sizes > 0).all()
    assert r.objective[-1] == pytest.approx(0.0, abs=1e-6)  # one cluster per distinct point


def test_zero_rows_are_never_seeds():
    rng = np.random.default_rng(10)
    x = np.concatenate([unit(rng, 50, 6), np.zeros((50, 6), np.float32)])
    idx = kmeanspp_init(torch.from_numpy(x), 50, torch.Generator().manual_seed(0))
    assert (idx < 50).all()
    r = spherical_kmeans(x, 50, backend="torch")
    assert np.allclose(np.linalg.norm(r.centroids, axis=1), 1.0, atol=1e-6)


def test_subsampling_is_seeded_and_recorded():
    x, _ = blobs(np.random.default_rng(11), 10, 5000, 8, 0.3)
    r = spherical_kmeans(x, 10, max_points_per_centroid=100, backend="torch")
    assert r.stats["subsampled_to"] == 1000 and r.stats["n"] == 5000
    assert r.sizes.sum() == 1000
    assert spherical_kmeans(x, 10, max_points_per_centroid=1000, backend="torch").stats["subsampled_to"] is None


def test_progress_reports_seeding_and_iterations():
    calls = []
    x, _ = blobs(np.random.default_rng(12), 10, 2000, 8, 0.3)
    spherical_kmeans(x, 300, iterations=2, backend="torch", progress=lambda *a, **f: calls.append((a, f)))
    seeding = [a for a, _ in calls if a[0] == "k-means++"]
    assert seeding[-1] == ("k-means++", 300, 300) and len(seeding) == 100  # every 1%, not every step
    lloyd = [(a, f) for a, f in calls if a[0] == "k-means"]
    assert [a for a, _ in lloyd] == [("k-means", i, 2) for i in range(3)] and "objective" in lloyd[0][1]


def test_normalize_rows():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1.0, 3.0]], np.float32)
    assert np.allclose(normalize_rows(x), [[0.6, 0.8], [0, 0], [1 / 10**0.5, 3 / 10**0.5]])
    assert np.allclose(normalize_rows(x, center=True), [[-(0.5**0.5), 0.5**0.5], [0, 0], [-(0.5**0.5), 0.5**0.5]])
    assert torch.allclose(normalize_rows(torch.from_numpy(x)), torch.from_numpy(normalize_rows(x)))
    assert normalize_rows(x.astype(np.float64)).dtype == np.float32


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "x, k, kwargs, error, message",
    [
        (np.ones((5, 3), np.float32), 6, {}, DataError, "k=6 is larger than the number of patches (5)"),
        (np.zeros((0, 3), np.float32), 1, {}, DataError, "no patches to cluster (N = 0)"),
        (np.ones((5, 3), np.float32), 0, {}, ConfigError, "k must be at least 1, got 0"),
        (np.ones(5, np.float32), 1, {}, DataError, "patches must be a 2-D array (N, d), got shape (5,)"),
        (
            np.ones((5, 3), np.float32),
            2,
            {"backend": "sklearn"},
            HgmError,
            "unknown k-means backend 'sklearn'; expected auto, torch or faiss",
        ),
        (
            np.ones((5, 3), np.float32),
            2,
            {"init": "greedy"},
            ConfigError,
            "unknown k-means init 'greedy'; expected auto, kmeans++, kmeans|| or random",
        ),
    ],
)
def test_errors(x, k, kwargs, error, message):
    with pytest.raises(error) as e:
        spherical_kmeans(x, k, **kwargs)
    assert str(e.value) == message


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_patches_are_refused(bad):
    x = np.ones((10, 3), np.float32)
    x[4, 1] = bad
    with pytest.raises(DataError, match=r"^patches contain NaN or inf values$"):
        spherical_kmeans(x, 2)


def test_faiss_requested_but_absent(monkeypatch):
    monkeypatch.setattr(kmeans, "_faiss", lambda: None)
    with pytest.raises(HgmError) as e:
        spherical_kmeans(np.eye(4, dtype=np.float32), 2, backend="faiss")
    assert str(e.value) == (
        "k-means backend 'faiss' is not installed: pip install faiss-cpu (or a faiss-gpu build), or use backend 'torch'"
    )
    assert pick_backend("auto", torch.device("cpu")) == "torch"


def test_pick_backend_auto():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert pick_backend("auto", cpu) == pick_backend("auto", cuda) == "torch"  # measured faster; see KMEANS_BACKENDS
    assert pick_backend("torch", cuda) == "torch"
    assert kmeans.FaissPoints.auto(cpu) == HAS_FAISS


def test_assign_refuses_mismatched_dimensions():
    with pytest.raises(DataError, match=r"^cannot assign points of shape \(4, 3\) to centroids of shape \(2, 5\)$"):
        assign(np.ones((4, 3), np.float32), np.ones((2, 5), np.float32))


# ---------------------------------------------------------------- torch.distributed


def _distributed_worker(rank: int, world: int, port: int, x: np.ndarray, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        shard = x[shard_for_rank(len(x))]
        runs = {
            "pp": spherical_kmeans(shard, 10, iterations=10, seed=5, device="cpu"),
            "random": spherical_kmeans(shard, 10, iterations=10, seed=5, init="random", device="cpu"),
            "sub": spherical_kmeans(shard, 10, iterations=10, seed=5, max_points_per_centroid=150, device="cpu"),
            "par": spherical_kmeans(shard, 10, iterations=10, seed=5, init="kmeans||", seed_points_per_centroid=50,
                                    device="cpu"),
        }
        if rank == 0:
            arrays = {f"{name}_{key}": np.asarray(getattr(r, key)) for name, r in runs.items() for key in ("centroids", "sizes", "objective")}
            arrays.update({f"{name}_backend": np.array(r.stats["backend"]) for name, r in runs.items()})
            np.savez(out, **arrays)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # ~8 s on 2 cores, most of it two fresh interpreters importing torch
def test_two_gloo_processes_equal_one_process(tmp_path):
    x, _ = blobs(np.random.default_rng(13), 12, 2000, 8, 0.4)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "rank0.npz")
    torch.multiprocessing.spawn(_distributed_worker, args=(2, port, x, out), nprocs=2, join=True)
    got = np.load(out)
    for name, kwargs in [("pp", {}), ("random", {"init": "random"}), ("sub", {"max_points_per_centroid": 150}),
                         ("par", {"init": "kmeans||", "seed_points_per_centroid": 50})]:
        one = spherical_kmeans(x, 10, iterations=10, seed=5, backend="torch", device="cpu", **kwargs)
        assert str(got[f"{name}_backend"]) == "torch"
        np.testing.assert_allclose(got[f"{name}_centroids"], one.centroids, atol=1e-6)
        assert got[f"{name}_sizes"].tolist() == one.sizes.tolist()
        np.testing.assert_allclose(got[f"{name}_objective"], one.objective, atol=1e-9)


def test_shard_for_rank_single_process_is_everything():
    assert shard_for_rank(17) == slice(0, 17)


def test_seeding_sample_is_uniform_distinct_and_the_same_on_every_rank():
    # k-means||'s uniform sample of k * 256 of the points, drawn in bounded memory (issue 16).
    n, m = 1000, 300
    draws = [kmeans._sample(0, n, n, m, torch.Generator().manual_seed(s), sparse=True) for s in range(400)]
    for keep in draws[:20]:
        assert len(keep) == m and len(torch.unique(keep)) == m and torch.equal(keep, torch.sort(keep).values)
        assert 0 <= int(keep.min()) and int(keep.max()) < n
    hits = torch.bincount(torch.cat(draws), minlength=n).double() / len(draws)  # each point: P = m / n = 0.3
    assert abs(float(hits.mean()) - 0.3) < 1e-12 and float((hits - 0.3).abs().max()) < 0.1
    # two ranks holding rows 0:600 and 600:1000 get the two halves of the same sample
    lo = kmeans._sample(0, 600, n, m, torch.Generator().manual_seed(7), sparse=True)
    hi = kmeans._sample(600, 400, n, m, torch.Generator().manual_seed(7), sparse=True)
    assert torch.equal(torch.cat([lo, hi + 600]), kmeans._sample(0, n, n, m, torch.Generator().manual_seed(7), sparse=True))
