"""Cosine (spherical) k-means with k-means++ seeding: the paper's KMEANS(S, k).

§5.1 clusters the s×s patches "w.r.t. the cosine similarity" with k-means++
(Arthur & Vassilvitskii 2007); appendix B spells the seeding out: the first
center uniformly among the examples, every next one with probability
D(x)² / Σ D(x')², D(x) = min_j ‖x − c_j‖, then Lloyd's algorithm. On unit
vectors D(x)² = 2 − 2·max_j ⟨x, c_j⟩, so the Euclidean seeding *is* the cosine
one, and Lloyd's algorithm becomes spherical k-means: assign each point to the
centroid of largest inner product, update each centroid to the mean of its
members re-normalised to unit length.

Seedings (``SEEDINGS``; ``init`` picks one, ``auto`` by the size of the job):

- ``kmeans++``: k sequential passes over every point, each drawing 2 + ln k
  candidates ∝ D² and keeping the one that lowers Σ D² most (the greedy
  variant; ``seed_trials=1`` is appendix B's plain D² sampling). Lemma 7 relies
  on it never choosing the same example twice: a chosen point and its exact
  duplicates have D² = 0 (float32 rounding leaves |2 − 2⟨x, x⟩| ≲ 2e-6,
  measured up to d = 4608, so D² below ``DUPLICATE_D2`` counts as 0), hence
  clustering |S| distinct patches into |S| clusters gives one center per patch.
- ``kmeans||`` (Bahmani et al., "Scalable k-means++", VLDB 2012): 5 rounds,
  each one batched pass that samples every point with probability
  min(1, ℓ·D²/Σ D²), ℓ = 2k; then the greedy k-means++ above on the ≈10k
  candidates, each weighted by the points nearest to it. It runs on a uniform
  sample of k·256 points, as FAISS trains on k·``max_points_per_centroid``.
- ``random``: k distinct points uniformly.
- ``auto``: ``kmeans++`` on every point while N·k ≤ ``AUTO_GREEDY_MAX_NK``
  (every synthetic and theory config: exact recovery), else ``kmeans||``.

Backends (``KMEANS_BACKENDS``) share the seeding and the Lloyd loop and differ
only in one pass over the points, the interface of faiss contrib's
``DatasetAssign``: ``search`` (nearest centroid by inner product) and
``assign_to`` (search + per-cluster sums), plus ``lower`` (a k-means|| round's
update of every point's D² and nearest candidate). ``torch`` runs on CPU or CUDA and
under ``torch.distributed`` (each rank owns a contiguous shard; the result
equals the single-process one); on CUDA it keeps the points on the device when
they fit and otherwise streams them from host memory through two pinned
buffers with asynchronous copies. ``faiss`` searches with ``IndexFlatIP``
(faiss-gpu's ``GpuIndexFlatIP`` on CUDA). Sums are float64
(``index_put_(accumulate=True)``), so the result does not depend on the chunk
size; empty clusters are re-seeded with the farthest points; Lloyd stops early
when no assignment changes (the update leaves every centroid where it was).
``objective`` is the mean cosine distance 1 − ⟨x, c_assigned⟩ over all points,
entry i after i updates.

Measured in one run of ``benchmarks/kmeans.py`` (``benchmarks/results/kmeans.txt``)
on the 2-core box, CIFAR-10 3×3×3 patches, 25 Lloyd iterations: the whole
``hgm cluster`` command took 1.16× the wall time (0.93× the CPU time) of a
plain script that loads the batches, samples, normalises and runs
``faiss.Kmeans(spherical=True)`` (random init, no subsampling) at 300k patches,
k = 256 (1.05-1.30× over five runs of one afternoon: the VM's speed moves), and
0.53× at 2M, k = 1024, where seeding (k-means|| on 262,144 points) was 6 % of
the command; the objective was 0.11 % / 0.02 % below greedy k-means++ on every
point; k-means alone worked in 1.16× / 1.09× the patches'
own size. Most of the speed comes from running the CPU passes on single-threaded
worker threads (``Points._run``) that make few torch calls a chunk: on the busy
box torch's two OpenMP threads lose 2-4× at their barriers, FAISS's search, with
its own OpenMP and OpenBLAS threads, ran 1.5× slower than these workers, and
each torch call a worker makes gives up the GIL and may wait to get it back.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from .device import resolve_device
from .errors import ConfigError, DataError, HgmError
from .progress import no_progress

# D² = 2 − 2⟨x, c⟩ below this is float32 noise of a point against itself: treated
# as 0, so duplicates of a chosen center are never chosen again (cosine distance
# 5e-6, an angle of 0.18°; measured noise ≤ 1.7e-6 for d ≤ 4608).
DUPLICATE_D2 = 1e-5

# init "auto": greedy k-means++ on every point up to this N·k, k-means|| above. The
# greedy seeding costs k·(2 + ln k) matrix-vector passes (memory-bound, ~4 GFLOP/s on
# the 2-core box): at N·k = 2^23 and d = 27 about a second; every synthetic, digits and
# smoke config is below 2e6, where exact recovery needs every distinct patch seeded.
AUTO_GREEDY_MAX_NK = 1 << 23
PARALLEL_ROUNDS = 5  # k-means|| sampling rounds (Bahmani et al.: 5 suffice in practice)
OVERSAMPLING = 2.0  # k-means|| expected candidates per round, in units of k (ℓ = 2k)
# Points the seeding looks at, per centroid (a uniform subsample when N is larger);
# None: every point. FAISS trains on 256 per centroid by default.
SEED_POINTS_PER_CENTROID = {"kmeans++": None, "kmeans||": 256, "random": None}

# Per chunk the torch search holds a (chunk, k) float32 similarity block: 4 MB per CPU
# worker (a pass over 1M x 27 points, k = 1024, took 4.5 / 3.8 / 3.6 / 4.1 s with 2 / 4 /
# 8 / 16 MB blocks on two workers, shared 2-core box at load 10: 4 MB, for a working
# memory below 20 % of 2M patches); 256 MB on a GPU keeps its kernels long.
_CHUNK_FLOATS = {"cpu": 1 << 20, "cuda": 1 << 26}
# ...and on the CPU the blocks of all workers together stay within this share of the points'
# own size (issue 16: working memory <= 20 % of the patches; the rest goes to the seeding's
# per-point state and to what glibc keeps), down to _MIN_CHUNK_ROWS rows a chunk, below
# which per-chunk overhead shows: each chunk's ~10 torch calls wait for the GIL on two
# workers (300k x 27, k = 256, 25 iterations: a pass over 914 / 1,306-row chunks is within
# the box's run-to-run noise, 1.95-2.95 s of Lloyd for either; at 0.1 the working memory
# was 5.7-6.8 MB, at 0.07 4.9-5.8 MB, six fresh processes each).
_BLOCK_SHARE = 0.07
_MIN_CHUNK_ROWS = 512
_FAISS_CHUNK = 1 << 16  # FAISS blocks internally; it slows down 3x on calls of 4096 rows (measured)
# Points per k-means++ chunk: its D² (4 MB) stays in cache between the
# matrix-vector product and the running-min/sum updates.
_SEED_CHUNK = 1 << 20
# Greedy k-means++ with n·trials·d below this runs on one CPU thread (above, on all of
# them): each of its ~15 ops per step then takes well under a millisecond, and two
# threads only add barriers (calibrated at d = 27: n·trials up to 2^22). Above it the
# step's matrix product dominates: 100,000 x 576 points, k = 1024, 9 candidates took
# 51 s on one thread and 26.5 s on two. Everything else outside the passes runs on one thread.
_SMALL_SEEDING = 27 << 22
_FIRST_MAX_K = 1 << 22  # ``_first_max``'s float32 column numbers stay exact integers up to 3k < 2^24
_RESIDENT_FRACTION = 0.5  # CUDA: copy the points to the device when they take at most this much of its free memory


@dataclass
class KMeansResult:
    centroids: np.ndarray  # (k, d) float32, unit L2 norm
    sizes: np.ndarray  # (k,) int64, cluster sizes under the final centroids
    objective: list[float]  # mean cosine distance; [0] after seeding, [i] after i Lloyd updates
    stats: dict = field(default_factory=dict)  # JSON-able: backend, device, timings, ...


# ---------------------------------------------------------------- torch.distributed


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def shard_for_rank(n: int) -> slice:
    """This rank's contiguous slice of ``n`` points (rank order); all of them when
    not running under torch.distributed."""
    if not _distributed():
        return slice(0, n)
    rank, world = dist.get_rank(), dist.get_world_size()
    return slice(rank * n // world, (rank + 1) * n // world)


class _Comm:
    """The few collectives we need; no-ops in a single process (or when
    ``local``). Tensors stay on the data's device (gloo on CPU, NCCL on CUDA)."""

    def __init__(self, local: bool = False):
        self.on = _distributed() and not local
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

    def all_gather_cat(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's t (lengths may differ), concatenated in rank order."""
        if not self.on:
            return t
        sizes = self.all_gather(torch.tensor([len(t)], device=t.device)).flatten().tolist()
        padded = t.new_zeros(max(sizes), *t.shape[1:])
        padded[: len(t)] = t
        every = self.all_gather(padded)
        return torch.cat([every[r, : sizes[r]] for r in range(self.world)])

    def broadcast_(self, t: torch.Tensor, src: int) -> torch.Tensor:
        if self.on:
            dist.broadcast(t, src=src)
        return t


# ---------------------------------------------------------------- backends: one pass over the points

_WORKER = threading.local()  # .pinned: this pool thread already runs torch on one thread
Searcher = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # (m, d) chunk -> sims (m,), labels (m,)


class Points:
    """A k-means backend: this rank's points, and one pass over them.

    A backend supplies ``searcher`` (nearest centroid by inner product, one
    chunk at a time); the passes built on it — ``search``, ``lower`` for a
    k-means|| round, ``assign_to`` (assign + accumulate) for one Lloyd step — and the chunk
    iteration are shared. Adding a backend is a subclass and an entry in
    ``KMEANS_BACKENDS``.

    x: (n, d) float32 tensor, rows of unit L2 norm or zero, in host memory (or
    already on ``device``). Every array a pass returns lives on ``self.device``.
    ``subset`` views some of the rows without copying them.
    """

    def __init__(self, x: torch.Tensor, device: torch.device, chunk_size: int, stream: bool | None = None):
        self.x = x
        self.device = device
        self.chunk = chunk_size
        self.streamed = False
        self.index: torch.Tensor | None = None  # (m,) int64 or int32 rows of x on x.device, when a subset
        self._nonzero: torch.Tensor | None = None
        self.threads = torch.get_num_threads()  # CPU threads a pass may use (``workers``)
        self._local = threading.local()  # per-thread scratch (``workspace``); shared with subsets
        # Elements a similarity block gets at least: the run's largest (Lloyd's chunk x k). One
        # block a thread for the whole run: growing it from the seeding's smaller blocks left the
        # freed ones in glibc's arenas (300k x 27, k = 256: +1-3 MB of RSS, varying run to run).
        self.block = 0
        self._pools: dict[int, ThreadPoolExecutor] = {}  # CPU workers by count; shared with subsets

    parallel = True  # passes may run on several CPU threads (``_run``); False: the backend parallelises itself

    # -- what a backend overrides

    @classmethod
    def check(cls, device: torch.device) -> None:
        """Raise an HgmError when this backend cannot run here (asked for by name)."""

    @classmethod
    def auto(cls, device: torch.device) -> bool:
        """Whether backend "auto" may pick this one on ``device`` (first in registry order wins)."""
        return True

    @classmethod
    def default_chunk(cls, k: int, d: int, device: torch.device, n: int | None = None) -> int:
        """Points per chunk when searching k centroids (the blocks' share of n points, when given)."""
        rows = max(1, _CHUNK_FLOATS.get(device.type, _CHUNK_FLOATS["cuda"]) // (k + 2 * d))
        if n is not None and device.type == "cpu":
            share = _BLOCK_SHARE * n * d / (torch.get_num_threads() * (k + 2 * d))
            rows = min(rows, max(_MIN_CHUNK_ROWS, int(share)))
        return rows

    def searcher(self, centroids: torch.Tensor) -> Searcher:
        """For (k, d) centroids on ``self.device``, a function mapping a chunk
        (m, d) to (sims (m,) float32, labels (m,) int64): the largest inner
        product and its centroid (first index on ties)."""
        raise NotImplementedError

    def describe(self) -> str:
        """Where it computes, for ``stats["device"]``."""
        return str(self.device)

    # -- shared

    def __len__(self) -> int:
        return len(self.x) if self.index is None else len(self.index)

    @property
    def d(self) -> int:
        return self.x.shape[1]

    def subset(self, index: torch.Tensor, chunk_size: int) -> Points:
        """The same backend over rows ``index`` ((m,) int64 or int32, sorted) of these points, sharing their memory."""
        other = copy.copy(self)
        index = index.to(self.x.device)
        other.index = index if self.index is None else self.index[index]
        other.chunk, other._nonzero = chunk_size, None
        return other

    def _host_rows(self, start: int, end: int) -> torch.Tensor:
        """Rows start:end, where x lives (a view, or a gathered copy for a subset)."""
        return self.x[start:end] if self.index is None else self.x[self.index[start:end]]

    def chunks(self, size: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """(start, rows start:start+m on ``self.device``); a chunk is valid until the next one."""
        size = size or self.chunk
        for start in range(0, len(self), size):
            yield start, self._host_rows(start, start + size).to(self.device)

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Rows ``idx`` ((m,) int64, local) on ``self.device``: (m, d)."""
        idx = idx.to(self.x.device)
        return self.x[idx if self.index is None else self.index[idx]].to(self.device)

    def workers(self) -> int:
        """Threads a pass runs on: on the CPU, torch's thread count when the points
        were made, each worker running torch single-threaded on every workers-th
        chunk (``_run``)."""
        return self.threads if self.device.type == "cpu" and self.parallel and not self.streamed else 1

    def _run(self, work: Callable[[int, torch.Tensor, int], None]) -> None:
        """Call work(start, chunk, worker) for every chunk, chunk i on worker
        i % workers. Several CPU workers are threads of a pool kept until
        ``close``, each running torch with one thread (torch releases the GIL):
        measured on the shared 2-core box at load 10, a Lloyd pass over 1M x 27
        points, k = 1024, took 4-6 s this way against 11-21 s with torch's own
        two OpenMP threads, whose barrier at the end of every op waits for a
        descheduled thread."""
        workers = self.workers()
        if workers == 1:
            for start, xc in self.chunks():
                work(start, xc, 0)
            return
        starts = range(0, len(self), self.chunk)

        def run(w: int) -> None:
            if not getattr(_WORKER, "pinned", False):  # this pool thread computes single-threaded
                torch.set_num_threads(1)
                _WORKER.pinned = True
            for start in starts[w::workers]:
                work(start, self._host_rows(start, start + self.chunk), w)

        if workers not in self._pools:
            self._pools[workers] = ThreadPoolExecutor(workers, thread_name_prefix="hgm-kmeans")
        with _threads(1):
            for future in [self._pools[workers].submit(run, w) for w in range(workers)]:
                future.result()  # re-raises a worker's exception here

    def close(self) -> None:
        """Stop the worker threads (a later pass starts new ones)."""
        for pool in self._pools.values():
            pool.shutdown()
        self._pools.clear()

    def workspace(self, rows: int, cols: int, dtype: torch.dtype = torch.float32, reserve: int = 0) -> torch.Tensor:
        """This thread's (rows, cols) scratch block of ``dtype`` on ``self.device``
        (its buffer, when made, holds at least ``reserve`` elements).
        One buffer a thread and dtype, kept between chunks and passes: glibc keeps
        what worker threads free of multi-MB temporaries (measured: +145 MB of RSS
        for 8 MB blocks allocated afresh per chunk on two threads, +27 MB with one
        block kept per thread). Its views are kept too: on two CPU workers every
        torch call a chunk makes, a view's included, can wait for the GIL."""
        local = self._local
        views = local.__dict__.setdefault("views", {})
        view = views.get((dtype, rows, cols))
        if view is None:
            buf = getattr(local, f"buf_{dtype}", None)
            if buf is None or buf.numel() < rows * cols:
                buf = torch.empty(max(rows * cols, reserve), dtype=dtype, device=self.device)
                setattr(local, f"buf_{dtype}", buf)
                views = local.views = {key: v for key, v in views.items() if key[0] != dtype}  # of the old one
            view = views[(dtype, rows, cols)] = buf[: rows * cols].view(rows, cols)
        return view

    def nonzero(self) -> torch.Tensor:
        """(n,) bool: rows that are not all zero (zero rows have no direction)."""
        if self._nonzero is None:
            nonzero = torch.empty(len(self), dtype=torch.bool, device=self.device)

            def work(start, xc, _):
                nonzero[start : start + len(xc)] = (xc != 0).any(dim=1)

            self._run(work)
            self._nonzero = nonzero
        return self._nonzero

    def search(self, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass: (sims (n,) float32, labels (n,) int64) of the nearest centroid."""
        n = len(self)
        sims = torch.empty(n, dtype=torch.float32, device=self.device)
        labels = torch.empty(n, dtype=torch.int64, device=self.device)
        search = self.searcher(centroids)

        def work(start, xc, _):
            sims[start : start + len(xc)], labels[start : start + len(xc)] = search(xc)

        self._run(work)
        return sims, labels

    def lower(self, centroids: torch.Tensor, d2min: torch.Tensor, nearest: torch.Tensor, first: int) -> None:
        """One k-means|| pass, in place: where a point's squared distance to its
        nearest of ``centroids`` (m, d) is below ``d2min`` ((n,) float32; below
        ``DUPLICATE_D2`` counts as 0), d2min takes it and ``nearest`` ((n,) int32)
        that centroid's number plus ``first``. Per chunk, so that no (n,)
        similarities or labels are made (at 300k points, k = 256: 0.5 MB of a
        6 MB working memory)."""
        search = self.searcher(centroids)

        def work(start, xc, _):
            s, lab = search(xc)
            d2 = _d2_(s)
            low, near = d2min[start : start + len(xc)], nearest[start : start + len(xc)]
            closer = d2 < low
            torch.minimum(low, d2, out=low)
            near[closer] = (lab[closer] + first).to(near.dtype)

        self._run(work)

    def assign_to(self, centroids: torch.Tensor) -> torch.Tensor:
        """One Lloyd pass: assign every point to its nearest centroid and total
        each cluster's members. Returns (k, d + 2) float64: per cluster the sum
        of its points, their count and the sum of their similarities. Each chunk
        goes in as [x, 1, sim] rows (one ``cat``) through one ``index_put_(accumulate=True)``:
        on two CPU workers every small op a chunk adds costs more than its work
        (each torch call gives up the GIL and waits to get it back; measured on
        1,306-row chunks, k = 256: the bincount of the counts and the similarity
        sum took two workers' speed-up from 1.81x to 1.34x). Float64 makes the
        totals independent of chunking (and ``index_put_`` accumulates
        deterministically on CUDA)."""
        k, d = centroids.shape
        # One accumulator per worker, added in worker order: deterministic for a thread count.
        acc = [torch.zeros(k, d + 2, dtype=torch.float64, device=self.device) for _ in range(self.workers())]
        search = self.searcher(centroids)
        ones = torch.ones(self.chunk, 1, device=self.device)

        def work(start, xc, w):
            s, lab = search(xc)
            rows = self.workspace(len(xc), d + 2, torch.float64)
            torch.cat((xc, ones if len(xc) == len(ones) else ones[: len(xc)], s.unsqueeze(1)), 1, out=rows)
            acc[w].index_put_((lab,), rows, accumulate=True)

        self._run(work)
        return sum(acc[1:], acc[0])


class TorchPoints(Points):
    """Matrix product + max in torch, on CPU or CUDA.

    On CUDA, points in host memory are copied to the device once when they take
    at most half its free memory; otherwise (or with ``stream=True``, which
    also works on the CPU, for tests) every pass streams them in chunks through
    two pinned host buffers, copying chunk i+1 on a side stream while chunk i
    is computed. Device memory then holds two chunks (and the seeding's per-point state)."""

    def __init__(self, x, device, chunk_size, stream=None):
        super().__init__(x, device, chunk_size)
        if stream is None and x.device != device:
            free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else float("inf")
            stream = x.numel() * x.element_size() > _RESIDENT_FRACTION * free
        if not stream and x.device != device:
            self.x = x.to(device)
        self.streamed = bool(stream)

    def searcher(self, centroids):
        ct = centroids.to(self.device, torch.float32).T  # (d, k)
        k = ct.shape[1]

        def search(xc):
            if self.device.type == "cuda" or k > _FIRST_MAX_K:  # the caching allocator reuses the block
                return (xc @ ct).max(dim=1)
            sims = torch.mm(xc, ct, out=self.workspace(len(xc), k, reserve=self.block))  # (m, k)
            return _first_max(sims, cols)

        cols = torch.arange(k, dtype=torch.float32, device=self.device)
        return search

    def describe(self):
        return str(self.device) + (" (streamed from host)" if self.streamed else "")

    def chunks(self, size=None):
        if not self.streamed:
            yield from super().chunks(size)
            return
        size = size or self.chunk
        n, d = len(self), self.d
        cuda = self.device.type == "cuda"
        host = [torch.empty(min(size, n), d, pin_memory=cuda) for _ in range(2)]  # staging, pinned on CUDA
        buf = [torch.empty(min(size, n), d, device=self.device) for _ in range(2)]
        if cuda:
            compute, copier = torch.cuda.current_stream(self.device), torch.cuda.Stream(self.device)
            copied = [torch.cuda.Event() for _ in range(2)]  # recorded after a chunk reached buf[slot]
            freed = [torch.cuda.Event() for _ in range(2)]  # recorded after the compute on buf[slot]
        starts = range(0, n, size)

        def issue(i: int) -> tuple[int, int, int]:
            slot, start = i % 2, starts[i]
            m = min(size, n - start)
            if cuda:
                copied[slot].synchronize()  # host[slot]'s previous copy has left it (unrecorded: no-op)
            if self.index is None:
                host[slot][:m].copy_(self.x[start : start + m])
            else:
                torch.index_select(self.x, 0, self.index[start : start + m], out=host[slot][:m])
            if cuda:
                with torch.cuda.stream(copier):
                    copier.wait_event(freed[slot])  # the compute on buf[slot]'s previous chunk is done
                    buf[slot][:m].copy_(host[slot][:m], non_blocking=True)
                    copied[slot].record(copier)
            else:
                buf[slot][:m].copy_(host[slot][:m])
            return slot, start, m

        pending = issue(0) if len(starts) else None
        for i in range(len(starts)):
            slot, start, m = pending
            if i + 1 < len(starts):
                pending = issue(i + 1)  # its host copy overlaps the device's work on chunk i
            if cuda:
                compute.wait_event(copied[slot])
            yield start, buf[slot][:m]
            if cuda:
                freed[slot].record(compute)


# The largest float32 below float32(DUPLICATE_D2): a float32 d2 is <= it exactly when
# d2 < DUPLICATE_D2 as torch compares a float32 tensor with that scalar (in float32).
_BELOW_DUPLICATE = float(np.nextafter(np.float32(DUPLICATE_D2), np.float32(0)))


def _d2_(sims: torch.Tensor) -> torch.Tensor:
    """D² = 2 − 2·sim of unit rows, in place, with duplicates (D² < DUPLICATE_D2) at
    exactly 0. The zeroing is one vectorised pass: ``F.threshold_`` keeps values above
    _BELOW_DUPLICATE, the same set as ``masked_fill_(d2 < DUPLICATE_D2, 0.0)``, whose
    boolean mask took 10x as long on the CPU (100,000 x 7: 1.0 vs 0.1 ms, one step of
    greedy k-means++)."""
    return F.threshold_(sims.mul_(-2.0).add_(2.0), _BELOW_DUPLICATE, 0.0)


def _first_max(sims: torch.Tensor, cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``sims.max(dim=1)`` of a CPU (m, k) block — each row's largest value and the
    first column holding it — overwriting the block. On the CPU torch's max with
    indices runs ~10x slower than its plain ``amax`` (m = 1,024, k = 256, one thread:
    354 vs 35 us, against 128 us for the (1024 x 27) @ (27 x 256) product before it),
    so the index comes from an ``amin``: j - 2k·sign(s_j - max) is j at the row's
    maxima and at least 2k elsewhere. Exact: s_j - max is 0 only where s_j equals the
    max (floats subtract exactly to 0 only when equal), and the column numbers are
    integers below 2^24 in float32. Ties and ±0 come out as torch.max's (first
    column; -0.0 equals 0.0). For finite sims with gradual underflow (torch's default;
    not under ``torch.set_flush_denormal(True)``). cols: (k,) float32, 0..k-1."""
    best = sims.amax(dim=1, keepdim=True)  # (m, 1)
    sims.sub_(best).sign_()  # 0 at the row's maxima, -1 elsewhere
    torch.add(cols, sims, alpha=-2 * len(cols), out=sims)
    return best.squeeze(1), sims.amin(dim=1).long()


def _faiss():
    """The faiss module, or None when it is not installed (GPU machines have none)."""
    try:
        import faiss
    except Exception:  # ImportError, or a wheel that fails to load (CPU flags, numpy ABI): absent
        return None
    return faiss


def faiss_has_gpu() -> bool:
    faiss = _faiss()
    return faiss is not None and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class FaissPoints(Points):
    """``IndexFlatIP`` searches (BLAS + a top-1 heap) on host memory; on a CUDA
    device with a faiss-gpu build, ``GpuIndexFlatIP`` (FAISS copies the chunks).
    A CUDA device without faiss-gpu runs on the CPU (``stats["device"]`` says so)."""

    parallel = False  # FAISS runs its own OpenMP threads

    def __init__(self, x, device, chunk_size, stream=None):
        self.gpu = device.type == "cuda" and faiss_has_gpu()
        super().__init__(x.cpu(), torch.device("cpu"), chunk_size)
        self._res = _faiss().StandardGpuResources() if self.gpu else None

    @classmethod
    def check(cls, device):
        if _faiss() is None:
            raise HgmError(
                "k-means backend 'faiss' is not installed: pip install faiss-cpu "
                "(or a faiss-gpu build), or use backend 'torch'"
            )
        if _distributed():
            raise ConfigError("k-means backend 'faiss' does not run under torch.distributed; use backend 'torch'")

    @classmethod
    def auto(cls, device):
        return _faiss() is not None and not _distributed() and (device.type == "cpu" or faiss_has_gpu())

    @classmethod
    def default_chunk(cls, k, d, device, n=None):
        return _FAISS_CHUNK

    def describe(self):
        return "cuda (faiss-gpu)" if self.gpu else "cpu"

    def searcher(self, centroids):
        faiss = _faiss()
        c = np.ascontiguousarray(centroids.cpu().numpy(), dtype=np.float32)
        index = faiss.GpuIndexFlatIP(self._res, c.shape[1]) if self.gpu else faiss.IndexFlatIP(c.shape[1])
        index.add(c)

        def search(xc):
            sims, labels = index.search(xc.numpy(), 1)  # (m, 1) each
            return torch.from_numpy(sims[:, 0]), torch.from_numpy(labels[:, 0])

        return search


# Registry order is "auto"'s preference. torch first: on the 2-core box its matmul + max
# in 8 MB blocks costs 1.6 ns of CPU time per (point, centroid) pair against 2.9-4.2 ns
# for FAISS's IndexFlatIP (300k x 27, k = 256 to 512, OMP_WAIT_POLICY=PASSIVE), and FAISS
# brings a second OpenMP runtime and OpenBLAS whose threads fight torch's for 2 cores.
KMEANS_BACKENDS: dict[str, type[Points]] = {"torch": TorchPoints, "faiss": FaissPoints}
BACKENDS = ("auto", *KMEANS_BACKENDS)  # the choices of ClusterConfig.backend


def available_backends() -> list[str]:
    """Registered backends that can run in this environment."""
    usable = []
    for name, cls in KMEANS_BACKENDS.items():
        try:
            cls.check(torch.device("cpu"))
        except HgmError:
            continue
        usable.append(name)
    return usable


def _choices(names) -> str:
    names = list(names)
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]


def pick_backend(backend: str, device: torch.device) -> str:
    """``auto``: the first registered backend whose ``auto(device)`` holds (torch,
    which runs everywhere). A named one must pass its ``check``."""
    if backend != "auto" and backend not in KMEANS_BACKENDS:
        raise ConfigError(f"unknown k-means backend {backend!r}; expected {_choices(['auto', *KMEANS_BACKENDS])}")
    if backend == "auto":
        return next(name for name, cls in KMEANS_BACKENDS.items() if cls.auto(device))
    KMEANS_BACKENDS[backend].check(device)
    return backend


# ---------------------------------------------------------------- helpers


def normalize_rows(x: np.ndarray | torch.Tensor, center: bool = False, eps: float = 1e-12, inplace: bool = False):
    """Optionally subtract each row's mean, then scale each row to unit L2 norm.

    x: (N, d) array or tensor; returns the same kind, float32 for numpy input.
    Rows of norm below ``eps`` (all-zero rows) stay zero: they have no direction.
    ``inplace`` (float32 numpy input): overwrite x instead of allocating a copy.
    Numpy input is processed in blocks of rows, so the temporaries stay small.
    """
    if isinstance(x, torch.Tensor):
        if center:
            x = x - x.mean(dim=1, keepdim=True)
        return x / x.norm(dim=1, keepdim=True).clamp_min(eps)
    if inplace and (not isinstance(x, np.ndarray) or x.dtype != np.float32):
        raise TypeError("normalize_rows(inplace=True) needs a float32 numpy array")
    out = x if inplace else np.empty(np.shape(x), dtype=np.float32)
    for start in range(0, len(x), 1 << 16):
        block = np.asarray(x[start : start + (1 << 16)], dtype=np.float32)
        if center:
            block = block - block.mean(axis=1, keepdims=True)
        out[start : start + len(block)] = block / np.maximum(np.linalg.norm(block, axis=1, keepdims=True), eps)
    return out


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


def _check_rows(x: torch.Tensor) -> tuple[bool, bool]:
    """(every value finite, every row of unit L2 norm or zero), in blocks of 4096 rows.
    Float64 norms: inf or NaN anywhere in a row makes its norm inf or NaN, and no
    finite float32 overflows."""
    unit = True
    for start in range(0, len(x), 4096):
        norm = torch.linalg.vector_norm(x[start : start + 4096], dim=1, dtype=torch.float64)  # (4096,)
        if not bool(torch.isfinite(norm).all()):
            return False, False
        unit = unit and bool((((norm - 1).abs() <= 5e-6) | (norm == 0)).all())
    return True, unit


def _prepare(x, k: int, comm: _Comm, device: torch.device) -> tuple[torch.Tensor, int, int]:
    """Validate x (the same verdict on every rank) and return its rows as a
    float32 tensor of unit (or zero) rows — x itself, without a copy, when it
    is a float32 array whose rows are unit already — with this rank's offset
    and the total number of points. One pass in blocks: no N×d temporaries."""
    if x.ndim != 2:
        raise DataError(f"patches must be a 2-D array (N, d), got shape {tuple(x.shape)}")
    xt = torch.as_tensor(x)
    if xt.dtype != torch.float32 or not xt.is_contiguous():
        xt = xt.to(torch.float32).contiguous()
    with _threads(1):  # memory-bound: one thread, no barriers
        finite, unit = _check_rows(xt)
    info = torch.tensor([len(xt), 0 if finite else 1], device=device)
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
    if not unit:
        xt = normalize_rows(xt)  # a copy: the caller's rows were not unit
    return xt, sum(sizes[: comm.rank]), n_total


@contextlib.contextmanager
def _threads(n: int):
    """torch on n CPU threads inside the block. Small sequential work runs on one: with
    two, every op ends at a barrier that costs a scheduler time slice when the machine is
    busy (measured: the greedy k-means++ on 10k k-means|| candidates, k = 1024, took 100 s
    on two threads and 6 s on one, on the shared 2-core box at load 10)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _offsets(n_local: int, comm: _Comm, device) -> tuple[list[int], int]:
    """Global start of every rank's shard, and the total number of points."""
    sizes = comm.all_gather(torch.tensor([n_local], device=device)).flatten().cpu().tolist()
    return [sum(sizes[:r]) for r in range(len(sizes))], sum(sizes)


def _sample(offset: int, n_local: int, n_total: int, m: int, generator: torch.Generator, sparse: bool = False):
    """This rank's local indices ((m_local,) sorted; int64, or int32 when
    ``sparse`` and n_total < 2^31) of a uniform sample
    (without replacement, seeded, the same on every rank) of m < n_total points.
    ``sparse``: in n_total bytes plus O(m) — draws with replacement, marked in a
    bitmap, until m are distinct, then drops the excess at random (uniform by
    symmetry) — instead of a permutation of all n_total (24 bytes a point with
    its sort: 48 MB at 2M points). At 2M points and m = 262,144: 9 MB at its
    peak, where sorting and de-duplicating the draws (np.unique) took 18 MB."""
    if not sparse:
        keep = torch.sort(torch.randperm(n_total, generator=generator)[:m]).values  # global, sorted
    else:
        seen = np.zeros(n_total, dtype=bool)  # 1 byte a point (the points themselves: 4·d)
        count = 0
        while count < m:
            seen[torch.randint(n_total, (m - count + m // 16 + 1,), generator=generator).numpy()] = True
            count = int(np.count_nonzero(seen))
        keep = np.flatnonzero(seen)  # sorted
        del seen
        if count > m:  # drop count - m of the distinct draws at random: the rest is uniform by symmetry
            drop = np.zeros(count, dtype=bool)
            while (left := count - m - int(np.count_nonzero(drop))) > 0:
                drop[torch.randint(count, (left,), generator=generator).numpy()] = True
            keep = keep[~drop]
        keep = torch.from_numpy(keep.astype(np.int32) if n_total < 1 << 31 else keep)  # kept all the seeding
    if offset or n_local < n_total:  # this rank's share
        keep = keep[(keep >= offset) & (keep < offset + n_local)] - offset
    return keep


def _gather_rows(points: Points, offset: int, idx: torch.Tensor, comm: _Comm) -> torch.Tensor:
    """Rows ``idx`` (global, (m,) int64 on CPU) of the sharded points, on every rank: (m, d)."""
    mine = (idx >= offset) & (idx < offset + len(points))
    out = torch.zeros(len(idx), points.d, dtype=torch.float32, device=points.device)
    out[mine.to(points.device)] = points.rows(idx[mine] - offset)
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


def _draw_batch(w: torch.Tensor, totals: torch.Tensor, chunk: int, generator: torch.Generator, count: int):
    """In one process, ``count`` draws ∝ w, each the point ``_draw`` would choose
    with the same uniform number (drawn in the same order), locating them with one
    cumulative sum per chunk instead of one per draw. Returns the local indices, or
    None, drawing nothing, when every weight is 0 (the caller falls back to ``_draw``)."""
    total = float(totals.sum())
    if total <= 0:
        return None
    chunk_totals = totals.cpu().tolist()
    located = []  # (chunk j, target within it) per draw
    for _ in range(count):
        u = float(torch.rand((), generator=generator, dtype=torch.float64, device=generator.device))
        located.append(_locate(chunk_totals, _locate([total], u * total)[1]))
    out = [0] * count
    for j in sorted({j for j, _ in located}):
        mine = [q for q, (jq, _) in enumerate(located) if jq == j]
        part = w[j * chunk : (j + 1) * chunk]
        cum = torch.cumsum(part, 0, dtype=torch.float64)
        targets = torch.tensor([located[q][1] for q in mine], dtype=torch.float64, device=cum.device)
        found = torch.searchsorted(cum, targets, right=True).tolist()
        last = None
        for q, i in zip(mine, found):
            if i >= len(cum):  # rounding: the chunk's last positive weight, as in _draw
                last = int(torch.nonzero(part > 0)[-1]) if last is None else last
                i = last
            out[q] = j * chunk + i
    return out


def _kmeanspp(points: Points, k, generator, comm, offsets, progress, trials: int = 1, weights=None,
              chunk: int = _SEED_CHUNK):
    """k-means++ on this rank's shard of unit rows; ``offsets`` (world,) are
    the shards' global starts. Returns the global indices (k,) int64 (CPU)
    and the centers (k, d) float32 on points.device, identical on every rank.

    ``trials`` > 1 is the greedy variant (Arthur & Vassilvitskii's experiments,
    scikit-learn's default with 2 + ln k): draw that many candidates ∝ D² and
    keep the one that lowers the potential Σ D² most. 1 is appendix B's plain
    D² sampling. ``weights`` ((n,) float32, optional): every point counts that
    many times (the first center ∝ w, then ∝ w·D², potential Σ w·D²). Per
    center: one pass over the points per candidate batch (memory-bound) that
    updates the running D² and its chunk sums while the chunk is in cache; the
    candidates' D² columns are kept meanwhile (n·trials floats)."""
    n, d, dev = len(points), points.d, points.device
    threads = 1 if n * trials * d <= _SMALL_SEEDING else points.threads
    if dev.type == "cpu" and torch.get_num_threads() != threads:
        with _threads(threads):
            return _kmeanspp(points, k, generator, comm, offsets, progress, trials, weights, chunk)
    nonzero = points.nonzero()
    live = nonzero if weights is None else nonzero & (weights > 0)
    # Running D² per point; all-zero (and weightless) rows weigh 0 throughout.
    dmin = torch.where(live, torch.inf, 0.0).to(dtype=torch.float32, device=dev)  # (n,)
    score = dmin if weights is None else torch.zeros(n, device=dev)  # w·D², what draws are ∝ to
    totals = torch.zeros(-(-n // chunk), dtype=torch.float64, device=dev)  # score sums per chunk
    chosen = torch.zeros(n, dtype=torch.bool, device=dev)
    centers = torch.empty(k, d, dtype=torch.float32, device=dev)
    indices = torch.empty(k, dtype=torch.int64)
    report_every = max(1, k // 100)

    def fetch(pick) -> tuple[torch.Tensor, int]:
        """The owner sends the point and its global index (float64 holds both exactly)."""
        rank, local = pick
        msg = torch.zeros(d + 1, dtype=torch.float64, device=dev)
        if rank == comm.rank:
            msg[:d], msg[d] = points.rows(torch.tensor([local]))[0], offsets[rank] + local
        comm.broadcast_(msg, src=rank)
        return msg[:d].to(torch.float32), int(msg[d])

    def d2_of(xc: torch.Tensor, cands: torch.Tensor) -> torch.Tensor:
        # (L, chunk) ‖x − c‖² for unit x, c, a candidate a row: the potentials are row sums and
        # the chosen one's D² a contiguous row (with the candidates as columns, the strided
        # float64 column sums made a step of 100,000 x 27 points, 7 candidates 8.7 ms, now 6.0)
        return _d2_(cands @ xc.T)

    for i in range(k):
        # First center ∝ w (uniform over the non-zero rows), then ∝ w·D²; uniform among
        # the points not chosen yet once every D² is 0 (fewer distinct points than k).
        n_draws = 1 if i == 0 else trials
        local_picks = None if i == 0 or comm.on else _draw_batch(score, totals, chunk, generator, n_draws)
        if local_picks is not None:  # one process: the same draws, one cumulative sum per step
            picks = list(zip(points.rows(torch.tensor(local_picks)), local_picks))
        else:
            picks = []
            for _ in range(n_draws):
                pick = None if i == 0 else _draw(score, totals, chunk, generator, comm)
                if pick is None:
                    if i == 0:
                        w = nonzero.to(torch.float32) if weights is None else weights * live
                    else:
                        w = (~chosen).to(torch.float32)
                    pick = _draw(w, _chunk_totals(w, chunk), chunk, generator, comm)
                picks.append(fetch(pick))
        cands = torch.stack([c for c, _ in picks])  # (L, d)
        # One pass: D² of every point to every candidate, kept per chunk (N·L floats) so the
        # chosen candidate's column updates the running D² without a second pass.
        d2s = [d2_of(xc, cands) for _, xc in points.chunks(chunk)]
        best = 0
        if len(picks) > 1:  # greedy: the candidate with the lowest potential after adding it
            pot = torch.zeros(len(picks), dtype=torch.float64, device=dev)
            for j, start in enumerate(range(0, n, chunk)):
                m = torch.minimum(dmin[None, start : start + chunk], d2s[j])
                if weights is not None:
                    m = m * weights[None, start : start + chunk]
                pot += m.sum(1, dtype=torch.float64)
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
            torch.minimum(dm, d2s[j][best], out=dm)
            if weights is not None:
                torch.mul(dm, weights[start : start + chunk], out=score[start : start + chunk])
            totals[j] = score[start : start + chunk].sum(dtype=torch.float64)
        if (i + 1) % report_every == 0 or i + 1 == k:
            progress("k-means++", i + 1, k)
    return indices, centers


def seed_kmeanspp(points, k, *, generator, comm, offsets, n_total, trials, progress):
    """Greedy (or, with trials = 1, plain) k-means++ on every given point."""
    idx, centers = _kmeanspp(points, k, generator, comm, offsets, progress, trials)
    return idx, centers, {"seed_trials": trials}


def seed_kmeans_parallel(points, k, *, generator, comm, offsets, n_total, trials, progress,
                         rounds: int = PARALLEL_ROUNDS, oversampling: float = OVERSAMPLING):
    """k-means|| (Bahmani et al. 2012, Algorithm 2), then greedy k-means++ on the candidates.

    A first candidate uniformly among the non-zero rows; then ``rounds`` rounds,
    each one ``points.lower`` pass over the newest candidates that updates every
    point's D² and nearest candidate, after which every point joins the
    candidates independently with probability min(1, ℓ·D²/Σ D²), ℓ =
    ``oversampling``·k (≈ 1 + rounds·ℓ candidates; more rounds while fewer than k).
    The uniform numbers are drawn for all n_total points from ``generator``, so
    the candidates do not depend on how the points are sharded. Each candidate
    is weighted by the points nearest to it, and the weighted greedy k-means++
    (every rank the same, on the gathered candidates) picks the k centers.
    Returns (global indices (k,) int64, centers (k, d), info)."""
    n, dev, offset = len(points), points.device, offsets[comm.rank]
    ell = oversampling * k
    nonzero = points.nonzero()
    dmin = torch.where(nonzero, torch.inf, 0.0).to(dtype=torch.float32, device=dev)  # (n,) running D²
    near = torch.zeros(n, dtype=torch.int32, device=dev)  # (n,) its nearest candidate
    w = nonzero.to(torch.float32)
    first = _draw(w, _chunk_totals(w, _SEED_CHUNK), _SEED_CHUNK, generator, comm)
    del w
    if first is None:  # every row is zero: nothing to sample ∝ D²
        return seed_kmeanspp(points, k, generator=generator, comm=comm, offsets=offsets, n_total=n_total,
                             trials=trials, progress=progress)
    rank, local = first
    new_idx = comm.all_gather_cat(torch.tensor([offset + local] if rank == comm.rank else [], dtype=torch.int64,
                                               device=dev)).cpu()
    cand_idx, cand_rows, total, r = [], [], 0, 0
    for r in range(rounds + 10 + 1):  # at most 10 extra rounds to reach k candidates
        if len(new_idx):
            new = _gather_rows(points, offset, new_idx, comm)  # (m, d)
            points.lower(new, dmin, near, total)
            cand_idx.append(new_idx)
            cand_rows.append(new)
            total += len(new_idx)
        progress("k-means||", min(r, rounds), rounds)
        if r >= rounds and total >= k:
            break
        phi = float(comm.all_reduce_(dmin.sum(dtype=torch.float64)))
        if phi <= 0:  # every point is a candidate or duplicates one
            break
        u = torch.rand(n_total, generator=generator, dtype=torch.float32)[offset : offset + n].to(dev)
        picked = torch.nonzero(u.mul_(phi / ell) < dmin).flatten()  # P(join) = min(1, ℓ·D²/φ)
        del u
        new_idx = comm.all_gather_cat(picked + offset).cpu()
    cand_idx, cands = torch.cat(cand_idx), torch.cat(cand_rows)  # (C,), (C, d)
    weights = torch.bincount(near[nonzero].long(), minlength=len(cand_idx)).to(torch.float64)
    weights = comm.all_reduce_(weights).to(torch.float32)
    if len(cand_idx) < k:  # fewer distinct points than k: add others uniformly, weightless
        avail = torch.ones(n, device=dev)
        mine = (cand_idx >= offset) & (cand_idx < offset + n)
        avail[(cand_idx[mine] - offset).to(dev)] = 0.0
        extra = []
        for _ in range(k - len(cand_idx)):
            rank, local = _draw(avail, _chunk_totals(avail, _SEED_CHUNK), _SEED_CHUNK, generator, comm)
            if rank == comm.rank:
                avail[local] = 0.0
            extra.append(offset + local if rank == comm.rank else 0)
        extra = comm.all_reduce_(torch.tensor(extra, dtype=torch.int64, device=dev)).cpu() if comm.on else (
            torch.tensor(extra, dtype=torch.int64))
        cands = torch.cat([cands, _gather_rows(points, offset, extra, comm)])
        cand_idx = torch.cat([cand_idx, extra])
        weights = torch.cat([weights, weights.new_zeros(len(extra))])
    with contextlib.closing(TorchPoints(cands, cands.device, len(cands))) as cpoints:
        chosen, centers = _kmeanspp(cpoints, k, generator, _Comm(local=True), [0], progress, trials, weights=weights)
    return cand_idx[chosen], centers, {"seed_trials": trials, "seed_rounds": r, "seed_candidates": len(cand_idx)}


def seed_random(points, k, *, generator, comm, offsets, n_total, trials, progress):
    """k distinct points, uniformly."""
    idx = torch.randperm(n_total, generator=generator)[:k]
    return idx, _gather_rows(points, offsets[comm.rank], idx, comm), {}


# name -> seeding(points, k, *, generator, comm, offsets, n_total, trials, progress)
#   -> (global indices (k,) int64, centers (k, d) float32 on points.device, stats dict)
SEEDINGS = {"kmeans++": seed_kmeanspp, "kmeans||": seed_kmeans_parallel, "random": seed_random}
INITS = ("auto", *SEEDINGS)  # the choices of ClusterConfig.init


def pick_init(init: str, n: int, k: int) -> str:
    """The seeding ``init`` names; ``auto``: greedy k-means++ while N·k is small, else k-means||."""
    if init != "auto" and init not in SEEDINGS:
        raise ConfigError(f"unknown k-means init {init!r}; expected {_choices(INITS)}")
    if init == "auto":
        return "kmeans++" if n * k <= AUTO_GREEDY_MAX_NK else "kmeans||"
    return init


def kmeanspp_init(x: torch.Tensor, k: int, generator: torch.Generator, chunk_size: int | None = None) -> torch.Tensor:
    """k-means++ seeds (appendix B, plain D² sampling) of the unit rows of x: (k,) int64 indices.

    x: (N, d) float32 tensor (this rank's shard under torch.distributed, where
    the indices are global). ``generator`` drives every random choice and must
    be seeded identically on every rank.
    """
    comm = _Comm()
    points = TorchPoints(x, x.device, chunk_size or _SEED_CHUNK)
    offsets, _ = _offsets(len(x), comm, x.device)
    with _full_fp32_matmul(), contextlib.closing(points):
        return _kmeanspp(points, k, generator, comm, offsets, no_progress, chunk=chunk_size or _SEED_CHUNK)[0]


# ---------------------------------------------------------------- Lloyd


def _reseed_empty(points: Points, centroids, empty, comm, offset, n_total) -> int:
    """Move each empty centroid onto one of the points farthest from their own
    centroid (lowest similarity, ties by index), skipping points that duplicate
    an existing centroid or one another. Same choice on every rank. Returns how
    many were moved (fewer when there are not enough distinct points). Rare:
    one more pass, for the similarities."""
    d, dev = points.d, points.device
    m = len(empty)
    want = max(4 * m, 64)
    search = points.searcher(centroids)
    sims = torch.cat([search(xc)[0] for _, xc in points.chunks()])  # (n,)
    key = sims.masked_fill(~points.nonzero(), torch.inf)  # zero rows are never candidates
    order = torch.sort(key, stable=True).indices  # (n,) farthest first
    while True:
        take = order[:want]
        packed = torch.full((want, d + 2), torch.inf, dtype=torch.float64, device=dev)
        packed[: len(take), 0] = key[take].double()
        packed[: len(take), 1] = (take + offset).double()  # exact below 2**53
        packed[: len(take), 2:] = points.rows(take).double()
        cand = comm.all_gather(packed).reshape(-1, d + 2)
        cand = cand[torch.argsort(cand[:, 1], stable=True)]  # by global index, then
        cand = cand[torch.argsort(cand[:, 0], stable=True)][:want]  # by similarity
        accepted: list[torch.Tensor] = []
        exhausted = False
        for row in cand:
            if not row[0] < 1 - DUPLICATE_D2 / 2:  # a duplicate of its centroid, or padding
                exhausted = True
                break
            v = row[2:].to(torch.float32)
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


def _lloyd(points: Points, centroids, iterations, comm, offset, n_total, progress):
    """Spherical Lloyd iterations from ``centroids`` (k, d) on points.device.
    Returns the final centroids, sizes, objective list, updates run and empty
    clusters re-seeded. Working memory: one chunk and the (k, d + 2) totals; no
    per-point state (a fixed point shows as an update that leaves the centroids
    as they are, not as labels compared between passes)."""
    d = centroids.shape[1]

    def step():
        totals = comm.all_reduce_(points.assign_to(centroids))  # (k, d + 2)
        return totals[:, :d], totals[:, d].round().long(), float(totals[:, d + 1].sum())

    objective: list[float] = []
    reseeded = 0
    it = 0
    while True:
        sums, counts, sim_sum = step()
        # An empty cluster (or one of all-zero rows) has no mean: move it to the
        # farthest points and assign again, so every iteration — the last one
        # included — reports clusters that are all non-empty when possible.
        for _ in range(10):
            empty = torch.nonzero((counts == 0) | (sums.norm(dim=1) == 0)).flatten().cpu()
            if not len(empty):
                break
            moved = _reseed_empty(points, centroids, empty, comm, offset, n_total)
            if not moved:
                break
            reseeded += moved
            sums, counts, sim_sum = step()
        objective.append(1.0 - sim_sum / n_total)
        update = normalize_rows(sums).to(torch.float32)  # spherical update
        # No assignment changed <=> the same sums <=> the same update: a fixed point (an update that
        # rounds to the same centroids after a change is one too: the next pass assigns the same).
        converged = torch.equal(update, centroids)
        progress("k-means", iterations if converged else it, iterations, objective=objective[-1])
        if it == iterations or converged:
            return centroids, counts, objective, it, reseeded
        centroids = update
        it += 1


# ---------------------------------------------------------------- public API


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
    seed_points_per_centroid: int | None = None,
    restarts: int = 1,
    stream: bool | None = None,
    progress=no_progress,
) -> KMeansResult:
    """KMEANS(S, k): cosine k-means of the rows of x, k-means++ seeded.

    ``init``: a ``SEEDINGS`` name or ``auto`` (greedy k-means++ while N·k ≤
    ``AUTO_GREEDY_MAX_NK``, else k-means||); ``stats["init_used"]`` says which.
    ``seed_trials``: candidates per k-means++ step (None, the default as in
    ``hgm cluster``: 2 + ln k, the greedy variant; 1: appendix B's plain D²
    sampling). ``seed_points_per_centroid``: seed on a uniform sample of k·that
    points (None: ``SEED_POINTS_PER_CENTROID`` of the seeding — 256 for
    k-means||, every point for k-means++). ``restarts``: independent
    runs (seeds seed, seed+1, ...); the one with the lowest final objective is
    kept and every run's objective is recorded in ``stats["restart_objectives"]``.

    x: (N, d) float32, rows of unit L2 norm (normalised here, in a copy, if they
    are not; all-zero rows stay zero, are never seeds and count as distance 1 to
    every centroid). Unit float32 rows are used in place: the working memory is
    the seeding's O(k·256) per-point state (O(N) for greedy k-means++ on every
    point) plus one block per CPU worker; Lloyd keeps no per-point state.
    Under torch.distributed x is this rank's contiguous shard (``shard_for_rank``)
    and the result equals the single-process one. ``max_points_per_centroid``
    subsamples (seeded) to k·that points first; ``stats["subsampled_to"]`` says so.
    ``chunk_size`` (points per block) bounds memory. ``stream`` (torch backend):
    stream the points from host memory every pass (None: on CUDA when they do
    not fit on the device). Deterministic for a seed on CPU (same inputs, same
    thread count → identical centroids); every random draw comes from a CPU
    generator, so CUDA makes the same choices up to matmul rounding.
    """
    if init != "auto" and init not in SEEDINGS:
        raise ConfigError(f"unknown k-means init {init!r}; expected {_choices(INITS)}")
    if restarts < 1:
        raise ConfigError(f"restarts must be at least 1, got {restarts}")
    if seed_trials is not None and seed_trials < 1:
        raise ConfigError(f"seed_trials must be at least 1, got {seed_trials}")
    if seed_points_per_centroid is not None and seed_points_per_centroid < 1:
        raise ConfigError(f"seed_points_per_centroid must be at least 1, got {seed_points_per_centroid}")
    if restarts > 1:
        runs = [
            spherical_kmeans(x, k, iterations=iterations, init=init, backend=backend, device=device, seed=seed + r,
                             max_points_per_centroid=max_points_per_centroid, chunk_size=chunk_size,
                             seed_trials=seed_trials, seed_points_per_centroid=seed_points_per_centroid,
                             stream=stream, progress=progress)
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
    backend_cls = KMEANS_BACKENDS[name]
    comm = _Comm()
    comm_dev = dev if name == "torch" else torch.device("cpu")  # where collectives' tensors live
    xt, offset, n_input = _prepare(x, k, comm, comm_dev)  # (n, d) this rank's shard, host memory
    d = xt.shape[1]
    trials = seed_trials if seed_trials is not None else 2 + int(np.log(k))
    # Every random choice comes from this CPU generator, identical on every rank
    # and on every device.
    gen = torch.Generator().manual_seed(seed)

    subsampled_to = None
    if max_points_per_centroid is not None and n_input > k * max_points_per_centroid:
        subsampled_to = k * max_points_per_centroid
        xt = xt[_sample(offset, len(xt), n_input, subsampled_to, gen)]  # a copy: Lloyd reads it every pass
    offsets, n_total = _offsets(len(xt), comm, comm_dev)
    offset = offsets[comm.rank]
    init_used = pick_init(init, n_total, k)
    per_centroid = seed_points_per_centroid or SEED_POINTS_PER_CENTROID[init_used]
    chunk = chunk_size or backend_cls.default_chunk(k, d, dev, len(xt))
    # A k-means|| round searches ℓ = 2k new candidates (a few % more or less) over the seeding's
    # sample: in chunks of 2/5 of Lloyd's, its blocks stay within Lloyd's (chunk x k) up to 2.5k
    # candidates, so one block a CPU worker serves the whole run (glibc kept the seeding's larger
    # blocks beside Lloyd's: 300k x 27, k = 256, ~0.3 MB of a 6 MB working memory).
    sampled = per_centroid is not None and n_total > k * per_centroid
    seed_chunk = chunk_size or max(1, chunk * 2 // 5)
    points = backend_cls(xt, dev, chunk, stream)
    points.block = chunk * k

    # On the CPU the main thread's O(n) bookkeeping runs torch on one thread; the passes
    # run on the points' worker threads (``Points._run``).
    single = _threads(1) if dev.type == "cpu" else contextlib.nullcontext()
    with _full_fp32_matmul(), contextlib.closing(points), single:
        t0 = time.perf_counter()
        seed_points, seed_offsets, n_seed = points, offsets, n_total
        if sampled:
            n_seed = k * per_centroid
            sample = _sample(offset, len(xt), n_total, n_seed, gen, sparse=True)
            seed_offsets, _ = _offsets(len(sample), comm, comm_dev)
            seed_points = points.subset(sample, seed_chunk)  # a view: no copy of the rows
            del sample  # held by seed_points alone: it goes before Lloyd
        _, centroids, seed_info = SEEDINGS[init_used](
            seed_points, k, generator=gen, comm=comm, offsets=seed_offsets, n_total=n_seed, trials=trials,
            progress=progress,
        )
        del seed_points
        t1 = time.perf_counter()
        centroids, counts, objective, updates, reseeded = _lloyd(
            points, centroids.to(points.device).clone(), iterations, comm, offset, n_total, progress
        )
        t2 = time.perf_counter()

    seeding = {"kmeans++": f"greedy k-means++ ({trials} candidates per step)" if trials > 1 else "k-means++",
               "kmeans||": f"k-means|| ({seed_info.get('seed_rounds')} rounds, "
                           f"{seed_info.get('seed_candidates', 0):,} candidates)",
               "random": "random"}[init_used]
    stats = {
        "backend": name,
        "device": points.describe(),
        "init": init,
        "init_used": init_used,
        # one line for a summary: "k-means|| (5 rounds, 2,561 candidates) on 65,536 points, 0.4 s"
        "seeding": f"{seeding} on {n_seed:,} points, {t1 - t0:.1f} s",
        "seed_trials": seed_info.get("seed_trials"),
        "seed_points": n_seed,  # points the seeding looked at (all ranks)
        "seed_rounds": seed_info.get("seed_rounds"),
        "seed_candidates": seed_info.get("seed_candidates"),
        "seed": seed,
        "k": k,
        "n": n_input,  # all ranks together
        "d": d,
        "iterations": updates,  # Lloyd updates run
        "iterations_requested": iterations,
        "converged": updates < iterations,  # stopped early: a fixed point (the update moved no centroid)
        "seconds_seed": round(t1 - t0, 4),
        "seconds_lloyd": round(t2 - t1, 4),
        "empty_reseeded": int(reseeded),  # moved to the farthest points
        "subsampled_to": subsampled_to,
        "chunk_size": chunk,
        "streamed": points.streamed,
        "world_size": comm.world,
    }
    return KMeansResult(
        centroids=np.ascontiguousarray(centroids.cpu().numpy(), dtype=np.float32),
        sizes=counts.cpu().numpy().astype(np.int64),
        objective=[float(o) for o in objective],
        stats=stats,
    )


def assign(x, centroids, *, device="auto", chunk_size=None) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid by inner product (cosine for unit rows), locally.

    x: (N, d) array/tensor, rows assumed unit; centroids: (k, d). Returns
    labels (N,) int64 (first index on ties) and similarities (N,) float32.
    """
    dev = resolve_device(device)
    xt = torch.as_tensor(x).to(torch.float32)
    ct = torch.as_tensor(centroids).to(dev, torch.float32)
    if xt.ndim != 2 or ct.ndim != 2 or xt.shape[1] != ct.shape[1]:
        raise DataError(f"cannot assign points of shape {tuple(xt.shape)} to centroids of shape {tuple(ct.shape)}")
    points = TorchPoints(xt, dev, chunk_size or TorchPoints.default_chunk(len(ct), 0, dev))
    with _full_fp32_matmul(), contextlib.closing(points):
        sims, labels = points.search(ct)
    return labels.cpu().numpy(), sims.cpu().numpy()
