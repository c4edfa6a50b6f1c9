"""Cosine (spherical) k-means with k-means++ seeding: the paper's KMEANS(S, k).

§5.1 clusters the s×s patches "w.r.t. the cosine similarity" with k-means++
(Arthur & Vassilvitskii 2007); appendix B spells the seeding out: the first
center uniformly among the examples, every next one with probability
D(x)² / Σ D(x')², D(x) = min_j ‖x − c_j‖, then Lloyd's algorithm. On unit
vectors D(x)² = 2 − 2·max_j ⟨x, c_j⟩, so the Euclidean seeding *is* the cosine
one, and Lloyd's algorithm becomes spherical k-means: assign each point to the
centroid of largest inner product, update each centroid to the mean of its
members re-normalised to unit length.

Seeding is always ours (FAISS's is serial and L2-only), runs on the device, and
keeps one running min-distance vector of N floats: O(N·d) work and O(chunk·d + N)
memory per center. Lemma 7 relies on k-means++ never choosing the same example
twice: here a chosen point and its exact duplicates have D² = 0 (float32
rounding leaves |2 − 2⟨x, x⟩| ≲ 2e-6, measured up to d = 4608, so D² below
``DUPLICATE_D2`` counts as 0), hence clustering |S| distinct patches into |S|
clusters gives one center per patch.

Two Lloyd backends with the same seeds and the same ``objective`` (mean cosine
distance 1 − ⟨x, c_assigned⟩ over all points, entry i after i updates):

- ``torch`` (CPU or CUDA, and multi-process under ``torch.distributed``):
  chunked assignment, float64 sums via ``index_put_(accumulate=True)``, so memory is bounded and
  the result does not depend on the chunk size; empty clusters are re-seeded
  with the farthest points; stops early when no assignment changes.
- ``faiss`` (CPU, or GPU with a faiss-gpu build): ``faiss.Kmeans(spherical=True)``
  started from our seeds, never subsampling behind our back.

Measured side by side on CIFAR-10 3×3×3 patches, k = 256, 10 iterations, 2
CPU cores (``benchmarks/kmeans.py``, which has the full tables): 200,000
patches in 3.3 s (torch) / 3.5 s (faiss) vs scikit-learn's 11.6 s; 2,000,000
in 31 s / 28 s vs 92 s; mean cosine distance within 0.7 % of scikit-learn's.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from .device import resolve_device
from .errors import ConfigError, DataError, HgmError
from .progress import no_progress

# D² = 2 − 2⟨x, c⟩ below this is float32 noise of a point against itself: treated
# as 0, so duplicates of a chosen center are never chosen again (cosine distance
# 5e-6, an angle of 0.18°; measured noise ≤ 1.7e-6 for d ≤ 4608).
DUPLICATE_D2 = 1e-5

# Largest temporary of a Lloyd chunk, in 4-byte floats (~256 MB).
_CHUNK_FLOATS = 1 << 26
# Points per k-means++ chunk: its D² (4 MB) stays in cache between the
# matrix-vector product and the running-min/sum updates.
_SEED_CHUNK = 1 << 20

INITS = ("kmeans++", "random")
BACKENDS = ("auto", "faiss", "torch")


@dataclass
class KMeansResult:
    centroids: np.ndarray  # (k, d) float32, unit L2 norm
    sizes: np.ndarray  # (k,) int64, cluster sizes under the final centroids
    objective: list[float]  # mean cosine distance; [0] after seeding, [i] after i Lloyd updates
    stats: dict = field(default_factory=dict)  # JSON-able: backend, device, timings, ...


# ---------------------------------------------------------------- backends


def _faiss():
    """The faiss module, or None when it is not installed (GPU machines have none)."""
    try:
        import faiss
    except Exception:  # ImportError, or a wheel that fails to load (CPU flags, numpy ABI): absent
        return None
    return faiss


def available_backends() -> list[str]:
    return ["faiss", "torch"] if _faiss() is not None else ["torch"]


def faiss_has_gpu() -> bool:
    faiss = _faiss()
    return faiss is not None and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def pick_backend(backend: str, device: torch.device) -> str:
    """``auto``: faiss when importable and it can run on ``device`` (CPU, or a
    faiss-gpu build), and not under torch.distributed; else torch. An explicit
    ``faiss`` with a CUDA device but a CPU-only faiss runs on the CPU (stats say so)."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown k-means backend {backend!r}; expected auto, faiss or torch")
    if backend == "torch":
        return "torch"
    if backend == "faiss":
        if "faiss" not in available_backends():
            raise HgmError(
                "k-means backend 'faiss' is not installed: pip install faiss-cpu "
                "(or a faiss-gpu build), or use backend 'torch'"
            )
        if _distributed():
            raise ConfigError("k-means backend 'faiss' does not run under torch.distributed; use backend 'torch'")
        return "faiss"
    usable = "faiss" in available_backends() and (device.type == "cpu" or faiss_has_gpu())
    return "faiss" if usable and not _distributed() else "torch"


# ---------------------------------------------------------------- helpers


def normalize_rows(x: np.ndarray | torch.Tensor, center: bool = False, eps: float = 1e-12):
    """Optionally subtract each row's mean, then scale each row to unit L2 norm.

    x: (N, d) array or tensor; returns the same kind, float32 for numpy input.
    Rows of norm below ``eps`` (all-zero rows) stay zero: they have no direction.
    """
    if isinstance(x, torch.Tensor):
        if center:
            x = x - x.mean(dim=1, keepdim=True)
        return x / x.norm(dim=1, keepdim=True).clamp_min(eps)
    x = np.asarray(x, dtype=np.float32)
    if center:
        x = x - x.mean(axis=1, keepdims=True)
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)).astype(np.float32, copy=False)


def shard_for_rank(n: int) -> slice:
    """This rank's contiguous slice of ``n`` points (rank order); all of them when
    not running under torch.distributed."""
    if not _distributed():
        return slice(0, n)
    rank, world = dist.get_rank(), dist.get_world_size()
    return slice(rank * n // world, (rank + 1) * n // world)


def _default_chunk(k: int, d: int) -> int:
    # Per point a chunk holds k float32 similarities and d float64 values for the sums.
    return max(1, _CHUNK_FLOATS // (k + 2 * d))


@contextlib.contextmanager
def _full_fp32_matmul():
    """Duplicate detection needs IEEE float32 inner products: TF32 (if a caller
    enabled it for training) has ~1e-3 error, which would hide D² = 0."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


class _Comm:
    """The few collectives we need; no-ops in a single process. Tensors stay on
    the data's device (gloo on CPU, NCCL on CUDA)."""

    def __init__(self):
        self.on = _distributed()
        self.rank = dist.get_rank() if self.on else 0
        self.world = dist.get_world_size() if self.on else 1

    def all_reduce_(self, t: torch.Tensor, op=None) -> torch.Tensor:
        if self.on:
            dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
        return t

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        """(world, *t.shape), rank order."""
        if not self.on:
            return t[None]
        out = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(out, t.contiguous())
        return torch.stack(out)

    def broadcast_(self, t: torch.Tensor, src: int) -> torch.Tensor:
        if self.on:
            dist.broadcast(t, src=src)
        return t


def _gather_rows(x: torch.Tensor, offset: int, n: int, idx: torch.Tensor, comm: _Comm) -> torch.Tensor:
    """Rows ``idx`` (global, (m,) int64 on CPU) of the sharded x, on every rank: (m, d)."""
    mine = (idx >= offset) & (idx < offset + n)
    out = torch.zeros(len(idx), x.shape[1], dtype=x.dtype, device=x.device)
    out[mine.to(x.device)] = x[(idx[mine] - offset).to(x.device)]
    return comm.all_reduce_(out)  # each row is owned by exactly one rank: a sum of zeros and it


# ---------------------------------------------------------------- seeding


def _chunk_totals(w: torch.Tensor, chunk: int) -> torch.Tensor:
    """float64 sum of each chunk of w: (ceil(n / chunk),)."""
    return torch.stack([c.sum(dtype=torch.float64) for c in w.split(chunk)]) if len(w) else w.new_zeros(0, dtype=torch.float64)


def _locate(totals: list[float], target: float) -> tuple[int, float]:
    """First position j with totals[j] > 0 whose cumulative range holds target
    (the last positive one if rounding pushed target past the end), and target
    minus the weight before j."""
    before, last = 0.0, None
    for j, t in enumerate(totals):
        if t > 0:
            if target < before + t:
                return j, target - before
            last = (j, target - before)
        before += t
    return last  # rounding: target ≥ the float64 total


def _draw(w: torch.Tensor, totals: torch.Tensor, chunk: int, generator: torch.Generator, comm: _Comm):
    """Choose one point with probability ∝ w across all ranks.

    w: this rank's (n,) non-negative float32 weights; totals: their float64
    chunk sums (``_chunk_totals``). One uniform number is drawn from
    ``generator`` (seeded identically on every rank) whatever happens, so the
    ranks stay in step. Returns (owner rank, local index; -1 on other ranks),
    or None when every weight is 0. The rank, then the chunk, then the point
    owning the cumulative position u·Σw is found with float64 sums, so the
    choice equals the single-process one up to float64 rounding at a boundary.
    """
    u = float(torch.rand((), generator=generator, dtype=torch.float64, device=generator.device))
    rank_totals = comm.all_gather(totals.sum().reshape(1)).flatten().cpu().tolist()  # (world,)
    if sum(rank_totals) <= 0:
        return None
    rank, target = _locate(rank_totals, u * sum(rank_totals))
    if rank != comm.rank:
        return rank, -1
    j, target = _locate(totals.cpu().tolist(), target)
    cum = torch.cumsum(w[j * chunk : (j + 1) * chunk], 0, dtype=torch.float64)
    i = int(torch.searchsorted(cum, torch.tensor([target], dtype=torch.float64, device=cum.device), right=True))
    if i >= len(cum):  # rounding again: the chunk's last positive weight
        i = int(torch.nonzero(w[j * chunk : (j + 1) * chunk] > 0)[-1])
    return rank, j * chunk + i  # w[i] > 0: cum[i] > target ≥ cum[i - 1]


def _kmeanspp(x, k, generator, chunk, comm, offsets, progress, trials: int = 1):
    """k-means++ on this rank's shard x (n, d) of unit rows; ``offsets`` (world,)
    are the shards' global starts. Returns the global indices (k,) int64 (CPU)
    and the centers (k, d) float32 on x.device, identical on every rank.

    ``trials`` > 1 is the greedy variant (Arthur & Vassilvitskii's experiments,
    scikit-learn's default with 2 + ln k): draw that many candidates ∝ D² and
    keep the one that lowers the potential Σ D² most. 1 is appendix B's plain
    D² sampling. Per center: one pass over x per candidate batch (memory-bound)
    that updates the running D² and its chunk sums while the chunk is in cache."""
    n, d = x.shape
    nonzero = (x != 0).any(dim=1)
    # Running D² per point; all-zero rows have no direction and weigh 0 throughout.
    dmin = torch.where(nonzero, torch.inf, 0.0).to(torch.float32)  # (n,)
    totals = torch.zeros(-(-n // chunk), dtype=torch.float64, device=x.device)  # D² sums per chunk
    chosen = torch.zeros(n, dtype=torch.bool, device=x.device)
    centers = torch.empty(k, d, dtype=x.dtype, device=x.device)
    indices = torch.empty(k, dtype=torch.int64)
    report_every = max(1, k // 100)

    def fetch(pick) -> tuple[torch.Tensor, int]:
        """The owner sends the point and its global index (float64 holds both exactly)."""
        rank, local = pick
        msg = torch.zeros(d + 1, dtype=torch.float64, device=x.device)
        if rank == comm.rank:
            msg[:d], msg[d] = x[local], offsets[rank] + local
        comm.broadcast_(msg, src=rank)
        return msg[:d].to(x.dtype), int(msg[d])

    def d2_of(xc: torch.Tensor, cands: torch.Tensor) -> torch.Tensor:
        d2 = (xc @ cands.T).mul_(-2.0).add_(2.0)  # (chunk, L) ‖x − c‖² for unit x, c
        return d2.masked_fill_(d2 < DUPLICATE_D2, 0.0)  # duplicates of c: exactly 0

    for i in range(k):
        # First center uniform (weights 1), then ∝ D²; uniform among the points not
        # chosen yet once every D² is 0 (fewer distinct points than k).
        n_draws = 1 if i == 0 else trials
        picks = []
        for _ in range(n_draws):
            pick = None if i == 0 else _draw(dmin, totals, chunk, generator, comm)
            if pick is None:
                w = nonzero.to(torch.float32) if i == 0 else (~chosen).to(torch.float32)
                pick = _draw(w, _chunk_totals(w, chunk), chunk, generator, comm)
            picks.append(fetch(pick))
        cands = torch.stack([c for c, _ in picks])  # (L, d)
        # One pass: D² of every point to every candidate, kept per chunk (N·L floats) so the
        # chosen candidate's column updates the running D² without a second pass.
        d2s = [d2_of(x[start : start + chunk], cands) for start in range(0, n, chunk)]
        best = 0
        if len(picks) > 1:  # greedy: the candidate with the lowest potential after adding it
            pot = torch.zeros(len(picks), dtype=torch.float64, device=x.device)
            for j, start in enumerate(range(0, n, chunk)):
                pot += torch.minimum(dmin[start : start + chunk, None], d2s[j]).sum(0, dtype=torch.float64)
            comm.all_reduce_(pot)
            best = int(torch.argmin(pot))  # first on ties: the same on every rank
        c, gidx = cands[best], picks[best][1]
        centers[i], indices[i] = c, gidx
        local = gidx - offsets[comm.rank]
        if 0 <= local < n:
            chosen[local] = True
            dmin[local] = 0.0
        for j, start in enumerate(range(0, n, chunk)):
            dm = dmin[start : start + chunk]
            torch.minimum(dm, d2s[j][:, best], out=dm)
            totals[j] = dm.sum(dtype=torch.float64)
        if (i + 1) % report_every == 0 or i + 1 == k:
            progress("k-means++", i + 1, k)
    return indices, centers


def _offsets(n_local: int, comm: _Comm, device) -> tuple[list[int], int]:
    """Global start of every rank's shard, and the total number of points."""
    sizes = comm.all_gather(torch.tensor([n_local], device=device)).flatten().cpu().tolist()
    return [sum(sizes[:r]) for r in range(len(sizes))], sum(sizes)


def kmeanspp_init(x: torch.Tensor, k: int, generator: torch.Generator, chunk_size: int | None = None) -> torch.Tensor:
    """k-means++ seeds (appendix B) of the unit rows of x: (k,) int64 indices.

    x: (N, d) float32 tensor (this rank's shard under torch.distributed, where
    the indices are global). ``generator`` drives every random choice and must
    be seeded identically on every rank.
    """
    comm = _Comm()
    offsets, _ = _offsets(len(x), comm, x.device)
    with _full_fp32_matmul():
        return _kmeanspp(x, k, generator, chunk_size or _SEED_CHUNK, comm, offsets, no_progress)[0]


# ---------------------------------------------------------------- Lloyd (torch)


@dataclass
class _Pass:
    sums: torch.Tensor  # (k, d) float64, sum of members (all ranks)
    counts: torch.Tensor  # (k,) int64 (all ranks)
    sim_sum: float  # Σ ⟨x, c_assigned⟩ (all ranks)
    changed: int  # assignments that differ from ``labels`` before the pass (all ranks)


def _lloyd_pass(x, centroids, labels, sims, chunk, comm) -> _Pass:
    """Assign this rank's points to their nearest centroid (largest inner product),
    writing ``labels`` (n,) int64 and ``sims`` (n,) float32 in place, and sum the
    members per cluster. Float64 sums make the result independent of chunking
    (and ``index_put_(accumulate=True)`` is deterministic on CUDA too)."""
    k, d = centroids.shape
    sums = torch.zeros(k, d, dtype=torch.float64, device=x.device)
    counts = torch.zeros(k, dtype=torch.int64, device=x.device)
    scalars = torch.zeros(2, dtype=torch.float64, device=x.device)  # sim_sum, changed
    for start in range(0, len(x), chunk):
        xc = x[start : start + chunk]
        s, lab = (xc @ centroids.T).max(dim=1)  # (chunk,), first index on ties
        scalars[1] += (lab != labels[start : start + chunk]).sum()
        labels[start : start + chunk] = lab
        sims[start : start + chunk] = s
        sums.index_put_((lab,), xc.double(), accumulate=True)  # 2x faster than index_add_ here
        counts += torch.bincount(lab, minlength=k)
        scalars[0] += s.sum(dtype=torch.float64)
    comm.all_reduce_(sums), comm.all_reduce_(counts), comm.all_reduce_(scalars)
    return _Pass(sums, counts, float(scalars[0]), int(scalars[1]))


def _reseed_empty(x, centroids, sims, nonzero, empty, comm, offset, n_total) -> int:
    """Move each empty centroid onto one of the points farthest from their own
    centroid (lowest similarity, ties by index), skipping points that duplicate
    an existing centroid or one another. Same choice on every rank. Returns how
    many were moved (fewer when there are not enough distinct points)."""
    d = x.shape[1]
    m = len(empty)
    want = max(4 * m, 64)
    key = sims.masked_fill(~nonzero, torch.inf)  # zero rows are never candidates
    order = torch.sort(key, stable=True).indices  # (n,) farthest first
    while True:
        take = order[:want]
        packed = torch.full((want, d + 2), torch.inf, dtype=torch.float64, device=x.device)
        packed[: len(take), 0] = key[take].double()
        packed[: len(take), 1] = (take + offset).double()  # exact below 2**53
        packed[: len(take), 2:] = x[take].double()
        cand = comm.all_gather(packed).reshape(-1, d + 2)
        cand = cand[torch.argsort(cand[:, 1], stable=True)]  # by global index, then
        cand = cand[torch.argsort(cand[:, 0], stable=True)][:want]  # by similarity
        accepted: list[torch.Tensor] = []
        exhausted = False
        for row in cand:
            if not row[0] < 1 - DUPLICATE_D2 / 2:  # a duplicate of its centroid, or padding
                exhausted = True
                break
            v = row[2:].to(x.dtype)
            if accepted and float((torch.stack(accepted) @ v).max()) >= 1 - DUPLICATE_D2 / 2:
                continue
            accepted.append(v)
            if len(accepted) == m:
                break
        if len(accepted) == m or exhausted or want >= n_total:
            break
        want *= 4
    for j, v in zip(empty.tolist(), accepted):
        centroids[j] = v
    return len(accepted)


def _lloyd_torch(x, centroids, iterations, chunk, comm, offset, n_total, progress):
    """Spherical Lloyd iterations from ``centroids`` (k, d). Returns the final
    centroids, sizes, objective list, updates run and empty clusters re-seeded."""
    n = len(x)
    labels = torch.full((n,), -1, dtype=torch.int64, device=x.device)
    sims = torch.empty(n, dtype=torch.float32, device=x.device)
    nonzero = (x != 0).any(dim=1)
    objective: list[float] = []
    reseeded = 0
    it = 0
    while True:
        p = _lloyd_pass(x, centroids, labels, sims, chunk, comm)
        # An empty cluster (or one of all-zero rows) has no mean: move it to the
        # farthest points and assign again, so every iteration — the last one
        # included — reports clusters that are all non-empty when possible.
        for _ in range(10):
            empty = torch.nonzero((p.counts == 0) | (p.sums.norm(dim=1) == 0)).flatten().cpu()
            if not len(empty):
                break
            moved = _reseed_empty(x, centroids, sims, nonzero, empty, comm, offset, n_total)
            if not moved:
                break
            reseeded += moved
            p = _lloyd_pass(x, centroids, labels, sims, chunk, comm)
            p.changed = max(p.changed, 1)
        objective.append(1.0 - p.sim_sum / n_total)
        converged = p.changed == 0  # no assignment changed: a fixed point, the update would be a no-op
        progress("k-means", iterations if converged else it, iterations, objective=objective[-1])
        if it == iterations or converged:
            return centroids, p.counts, objective, it, reseeded
        centroids = normalize_rows(p.sums).to(x.dtype)  # spherical update
        it += 1


# ---------------------------------------------------------------- Lloyd (faiss)


def _lloyd_faiss(x: np.ndarray, seeds: np.ndarray, iterations: int, seed: int, gpu: bool):
    """FAISS spherical k-means from our seeds. Returns centroids (k, d), the
    per-iteration mean cosine distance (before each update) and clusters split."""
    faiss = _faiss()
    n, d = x.shape
    k = len(seeds)
    if iterations == 0:
        return seeds, [], 0
    km = faiss.Kmeans(
        d,
        k,
        niter=iterations,
        spherical=True,
        seed=seed,
        # FAISS silently subsamples to 256 points per centroid by default; we
        # subsample ourselves (seeded, in stats) or not at all.
        max_points_per_centroid=n // k + 1,
        min_points_per_centroid=1,  # no "please provide more points" on stderr
        gpu=bool(gpu),
        verbose=False,
    )
    km.train(x, init_centroids=seeds)
    # obj at iteration i = Σ ⟨x, c⟩ under the centroids *before* update i
    objective = [1.0 - st["obj"] / n for st in km.iteration_stats]
    splits = int(sum(st["nsplit"] for st in km.iteration_stats))
    return km.centroids.astype(np.float32), objective, splits


# ---------------------------------------------------------------- public API


def _validate(x, k: int, comm: _Comm, device) -> tuple[int, int]:
    """Shape/finite checks, the same verdict on every rank. Returns (offset, N)."""
    if x.ndim != 2:
        raise DataError(f"patches must be a 2-D array (N, d), got shape {tuple(x.shape)}")
    finite = bool(np.isfinite(x).all()) if isinstance(x, np.ndarray) else bool(torch.isfinite(x).all())
    info = torch.tensor([len(x), 0 if finite else 1], device=device)
    every = comm.all_gather(info).cpu()  # (world, 2)
    sizes = every[:, 0].tolist()
    n_total = sum(sizes)
    if n_total == 0:
        raise DataError("no patches to cluster (N = 0)")
    if k < 1:
        raise ConfigError(f"k must be at least 1, got {k}")
    if k > n_total:
        raise DataError(f"k={k} is larger than the number of patches ({n_total})")
    if every[:, 1].any():
        raise DataError("patches contain NaN or inf values")
    return sum(sizes[: comm.rank]), n_total


def spherical_kmeans(
    x: np.ndarray,
    k: int,
    *,
    iterations: int = 25,
    init: str = "kmeans++",
    backend: str = "auto",
    device: str | torch.device = "auto",
    seed: int = 0,
    max_points_per_centroid: int | None = None,
    chunk_size: int | None = None,
    seed_trials: int | None = None,
    restarts: int = 1,
    progress=no_progress,
) -> KMeansResult:
    """KMEANS(S, k): cosine k-means of the rows of x, k-means++ seeded.

    ``seed_trials``: candidates per k-means++ step (None, the default as in
    ``hgm cluster``: 2 + ln k, the greedy variant; 1: appendix B's plain D²
    sampling). ``restarts``: independent
    runs (seeds seed, seed+1, ...); the one with the lowest final objective is
    kept and every run's objective is recorded in ``stats["restart_objectives"]``.

    x: (N, d) float32, rows of unit L2 norm (re-normalised here anyway; all-zero
    rows stay zero, are never seeds and count as distance 1 to every centroid).
    Under torch.distributed x is this rank's contiguous shard (``shard_for_rank``)
    and the result equals the single-process one. ``max_points_per_centroid``
    subsamples (seeded) to k·that points first; ``stats["subsampled_to"]`` says so.
    ``chunk_size`` (points per block) bounds memory; default ≈256 MB blocks.
    Deterministic for a seed on CPU (same inputs, same thread count → identical
    centroids); every random draw comes from a CPU generator, so CUDA makes the
    same choices up to matmul rounding.
    """
    if init not in INITS:
        raise ConfigError(f"unknown k-means init {init!r}; expected kmeans++ or random")
    if restarts < 1:
        raise ConfigError(f"restarts must be at least 1, got {restarts}")
    if seed_trials is not None and seed_trials < 1:
        raise ConfigError(f"seed_trials must be at least 1, got {seed_trials}")
    if restarts > 1:
        runs = [
            spherical_kmeans(x, k, iterations=iterations, init=init, backend=backend, device=device, seed=seed + r,
                             max_points_per_centroid=max_points_per_centroid, chunk_size=chunk_size,
                             seed_trials=seed_trials, progress=progress)
            for r in range(restarts)
        ]
        best = min(runs, key=lambda r: r.objective[-1])  # first on ties
        best.stats["restarts"] = restarts
        best.stats["restart_objectives"] = [r.objective[-1] for r in runs]
        best.stats["seconds_seed"] = round(sum(r.stats["seconds_seed"] for r in runs), 4)
        best.stats["seconds_lloyd"] = round(sum(r.stats["seconds_lloyd"] for r in runs), 4)
        return best
    if iterations < 0:
        raise ConfigError(f"iterations must be at least 0, got {iterations}")
    dev = resolve_device(device)
    name = pick_backend(backend, dev)
    use_gpu_faiss = name == "faiss" and dev.type == "cuda" and faiss_has_gpu()
    run_dev = dev if name == "torch" or use_gpu_faiss else torch.device("cpu")
    comm = _Comm()
    offset, n_input = _validate(x, k, comm, run_dev)
    trials = seed_trials if seed_trials is not None else 2 + int(np.log(k))

    xt = normalize_rows(torch.as_tensor(x).to(run_dev, torch.float32))  # (n, d) this rank's shard
    d = xt.shape[1]
    chunk = chunk_size or _default_chunk(k, d)
    # Every random choice comes from this CPU generator, identical on every rank
    # and on every device.
    gen = torch.Generator().manual_seed(seed)

    subsampled_to = None
    if max_points_per_centroid is not None and n_input > k * max_points_per_centroid:
        subsampled_to = k * max_points_per_centroid
        keep = torch.sort(torch.randperm(n_input, generator=gen)[:subsampled_to]).values  # global, sorted
        xt = xt[(keep[(keep >= offset) & (keep < offset + len(xt))] - offset).to(run_dev)]
    offsets, n_total = _offsets(len(xt), comm, run_dev)
    offset = offsets[comm.rank]

    with _full_fp32_matmul():
        t0 = time.perf_counter()
        if init == "kmeans++":
            seed_idx, centroids = _kmeanspp(xt, k, gen, chunk_size or _SEED_CHUNK, comm, offsets, progress, trials)
        else:
            seed_idx = torch.randperm(n_total, generator=gen)[:k]
            centroids = _gather_rows(xt, offset, len(xt), seed_idx, comm)
        t1 = time.perf_counter()
        if name == "torch":
            centroids, counts, objective, updates, reseeded = _lloyd_torch(
                xt, centroids.clone(), iterations, chunk, comm, offset, n_total, progress
            )
            centroids_np, sizes = centroids.cpu().numpy(), counts.cpu().numpy()
        else:
            centroids_np, objective, reseeded = _lloyd_faiss(
                xt.cpu().numpy(), centroids.cpu().numpy(), iterations, seed, use_gpu_faiss
            )
            for it, obj in enumerate(objective):  # FAISS has no callback: report afterwards
                progress("k-means", it, iterations, objective=obj)
            # One more assignment: the objective and sizes of the final centroids.
            labels, sims = assign(xt, centroids_np, device=run_dev, chunk_size=chunk)
            objective.append(1.0 - float(sims.sum(dtype=np.float64)) / n_total)
            progress("k-means", iterations, iterations, objective=objective[-1])
            sizes = np.bincount(labels, minlength=k)
            updates = iterations
        t2 = time.perf_counter()

    stats = {
        "backend": name,
        "device": str(run_dev) + (" (faiss-gpu)" if use_gpu_faiss else ""),
        "init": init,
        "seed_trials": trials if init == "kmeans++" else None,
        "seed": seed,
        "k": k,
        "n": n_input,  # all ranks together
        "d": d,
        "iterations": updates,  # Lloyd updates run
        "iterations_requested": iterations,
        "converged": updates < iterations,  # stopped early: no assignment changed
        "seconds_seed": round(t1 - t0, 4),
        "seconds_lloyd": round(t2 - t1, 4),
        "empty_reseeded": int(reseeded),  # torch: moved to far points; faiss: clusters split
        "subsampled_to": subsampled_to,
        "chunk_size": chunk,
        "world_size": comm.world,
    }
    return KMeansResult(
        centroids=np.ascontiguousarray(centroids_np, dtype=np.float32),
        sizes=np.asarray(sizes, dtype=np.int64),
        objective=[float(o) for o in objective],
        stats=stats,
    )


def assign(x, centroids, *, device="auto", chunk_size=None) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid by inner product (cosine for unit rows), locally.

    x: (N, d) array/tensor, rows assumed unit; centroids: (k, d). Returns
    labels (N,) int64 (first index on ties) and similarities (N,) float32.
    """
    dev = resolve_device(device)
    xt = torch.as_tensor(x).to(dev, torch.float32)
    ct = torch.as_tensor(centroids).to(dev, torch.float32)
    if xt.ndim != 2 or ct.ndim != 2 or xt.shape[1] != ct.shape[1]:
        raise DataError(f"cannot assign points of shape {tuple(xt.shape)} to centroids of shape {tuple(ct.shape)}")
    chunk = chunk_size or _default_chunk(len(ct), 0)
    labels = torch.empty(len(xt), dtype=torch.int64, device=dev)
    sims = torch.empty(len(xt), dtype=torch.float32, device=dev)
    with _full_fp32_matmul():
        for start in range(0, len(xt), chunk):
            s, lab = (xt[start : start + chunk] @ ct.T).max(dim=1)
            labels[start : start + chunk], sims[start : start + chunk] = lab, s
    return labels.cpu().numpy(), sims.cpu().numpy()
