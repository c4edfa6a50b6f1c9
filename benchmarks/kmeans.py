"""k-means side by side, in one run: the whole `hgm cluster` command against a plain-FAISS
script doing the same work, hgm's seedings on identical patches, and its backends (and
scikit-learn) on the same patches with their peak memory.

    PYTHONPATH=. nice -n 5 .venv/bin/python benchmarks/kmeans.py [--data DIR] \\
        [--cases 300000:256:5,2000000:1024:1] [--iterations 25] [--alone-max-n 300000]

Per case (N CIFAR-10 3x3x3 patches, k clusters, 25 Lloyd iterations, seed 0):

1. Whole command against whole script, alternated ``repeats`` times (best of each kept;
   5 at 300k, where one run is ~6 s and this VM's speed moves 20-50 % within the hour:
   with 2, the ratio read 1.05 / 1.08 / 1.18 / 1.30 in four runs of one afternoon):
   ``python benchmarks/faiss_plain.py`` (load the batches, sample, standardise, normalise,
   ``faiss.Kmeans(spherical=True)``, random init, no subsampling, save) and
   ``python -m hgmcli cluster --init auto`` (the same, through hgm: k-means|| seeding on a
   k*256 sample where N*k is large, Lloyd on every patch). Each is a subprocess: wall
   clock, CPU time (user + sys) and peak RSS from ``os.wait4``. Both draw the same patch
   positions (numpy's default_rng(0)), so their objectives are comparable too.
2. Seeding quality on identical patches: ``hgm cluster --init kmeans++`` (greedy, every
   point) once; the objective of (1)'s hgm run relative to it.
3. k-means alone, each in a fresh process on the same saved patches (hgm's own sampling):
   hgm's torch backend with init auto, and up to ``--alone-max-n`` patches hgm's faiss
   backend and scikit-learn's KMeans (k-means++, Lloyd, tol 0). Working memory = peak RSS
   during the call minus the RSS just before it (the patches loaded, the code paths warmed
   up at the same k on 16·k points in 64-row chunks, peak reset through
   /proc/self/clear_refs); the target reads peak <= 1.2x the patches' own size as
   patches + working memory. The child runs 3 times (fresh processes) and reports the
   median: glibc's arenas make one run's figure vary by about +-1 MB.

CPU time is reported beside wall time because the 2-core box is shared: under load the
wall clock mostly measures the other jobs, CPU time the work done.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

DEFAULT_DATA = os.environ.get("HGM_CIFAR", str(ROOT.parent / "shared" / "data"))


# ---------------------------------------------------------------- subprocesses


def run_process(argv: list[str]) -> dict:
    """Run argv; its stdout (or its last line) is JSON. Adds wall and CPU seconds and peak
    RSS (MB), reaping the child with wait4 so that the rusage is its own."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        text, error = out.read().decode().strip(), err.read().decode()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n{error[-2000:]}")
    try:
        result = json.loads(text)
    except json.JSONDecodeError:
        result = json.loads(text.splitlines()[-1])
    result.update(wall=wall, cpu=usage.ru_utime + usage.ru_stime, peak_rss_mb=usage.ru_maxrss / 1024)
    return result


def plain_faiss(data: str, n: int, k: int, iterations: int, out: str) -> dict:
    r = run_process([sys.executable, "benchmarks/faiss_plain.py", "--data", data, "--patches", str(n),
                            "--k", str(k), "--iterations", str(iterations), "--out", out])
    r["detail"] = f"load {r['seconds_load']:.1f} s, patches {r['seconds_patches']:.1f} s, k-means {r['seconds_kmeans']:.1f} s"
    return r


def hgm_cluster(data: str, n: int, k: int, iterations: int, out: str, init: str = "auto") -> dict:
    r = run_process([sys.executable, "-m", "hgmcli", "-q", "cluster", "--data", data, "--patches", str(n),
                            "--k", str(k), "--iterations", str(iterations), "--init", init, "--out", out, "--json"])
    s = r["stats"]
    r["objective"] = s["objective"][-1]
    r["detail"] = (f"patches {s['seconds_patches']:.1f} s, {s['seeding']}, Lloyd {s['seconds_lloyd']:.1f} s "
                   f"({s['backend']})")
    return r


# ---------------------------------------------------------------- k-means alone, in a child


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def child(method: str, path: str, k: int, iterations: int, seed: int) -> None:
    """Print {seconds, cpu, objective, working_mb, ...} for one method on the patches at path."""

    from hgmcli import kmeans

    x = np.load(path)
    # Warm up the same code paths, at the same k on 16·k points in 64-row chunks: the first call
    # of each kernel maps its code pages (a one-time cost of the process, ~1 MB of libtorch_cpu.so
    # at 300k when the warm-up ran at k = 8), while the warm-up's own blocks (64 x k) and arrays
    # (16·k points) stay too small to leave glibc memory the measured run could reuse.
    if method != "sklearn":
        kmeans.spherical_kmeans(x[:16 * k], k, iterations=2, init="kmeans||", seed_points_per_centroid=4,
                                backend=method, device="cpu", chunk_size=64)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS (Linux >= 4.0)
    before = _status_kb("VmRSS")
    t0, c0 = time.perf_counter(), time.process_time()
    if method == "sklearn":
        from sklearn.cluster import KMeans

        km = KMeans(k, init="k-means++", n_init=1, max_iter=iterations, tol=0.0, algorithm="lloyd", random_state=seed)
        km.fit(x)
        centroids, detail = km.cluster_centers_.astype(np.float32), f"{km.n_iter_} it"
    else:
        r = kmeans.spherical_kmeans(x, k, iterations=iterations, init="auto", backend=method, device="cpu", seed=seed)
        centroids = r.centroids
        detail = f"{r.stats['seeding']}, Lloyd {r.stats['seconds_lloyd']:.1f} s"
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    working = (_status_kb("VmHWM") - before) / 1024
    _, sims = kmeans.assign(x, kmeans.normalize_rows(centroids), device="cpu")
    print(json.dumps({"method": method, "seconds": seconds, "cpu_inproc": cpu, "working_mb": working,
                      "patches_mb": x.nbytes / 2**20, "objective": 1.0 - float(sims.mean(dtype=np.float64)),
                      "detail": detail}))


def hgm_patches(data: str, n: int, seed: int) -> np.ndarray:
    """(n, 27) unit rows: hgm cluster's own sampling (train split, standardised, 3x3, stride 1)."""
    import torch

    from hgmcli import data as hdata
    from hgmcli import kmeans
    from hgmcli.config import DataConfig
    from hgmcli.network import Preprocess
    from hgmcli.patches import sample_patches

    cfg = DataConfig(root=data)
    ds = hdata.load_dataset(cfg, "train", seed=seed)
    norm = hdata.normalization(cfg, ds)
    pre = Preprocess(norm["scale"], norm["mean"], norm["std"])
    x, _ = sample_patches(ds.images, n, 3, 1, lambda b: pre(torch.from_numpy(np.ascontiguousarray(b))),
                          rng=np.random.default_rng(seed), batch_size=256)
    return kmeans.normalize_rows(x, inplace=True)


# ---------------------------------------------------------------- main


def load_line() -> str:
    return "load average " + ", ".join(f"{v:.1f}" for v in os.getloadavg())


def fmt_row(name: str, r: dict, ref: dict | None) -> str:
    ratio = f"{r['wall'] / ref['wall']:.2f}x" if ref else ""
    cratio = f"{r['cpu'] / ref['cpu']:.2f}x" if ref and r.get("cpu") else ""
    return (f"{name:<30}{r['wall']:>8.1f}{ratio:>8}{r.get('cpu', float('nan')):>8.1f}{cratio:>8}"
            f"{r.get('peak_rss_mb', float('nan')):>9,.0f}{r['objective']:>10.5f}  {r['detail']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=DEFAULT_DATA, help="folder holding cifar-10-batches-py/ (or that folder)")
    p.add_argument("--cases", default="300000:256:5,2000000:1024:1",
                   help="N:k[:repeats],... (repeats: alternations of script and command, best kept)")
    p.add_argument("--iterations", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--alone-max-n", type=int, default=300_000,
                   help="k-means alone: hgm's faiss backend and scikit-learn only up to this many patches")
    p.add_argument("--alone-repeats", type=int, default=3,
                   help="k-means alone: fresh processes per method; the run of median working memory is "
                        "reported (its seconds too)")
    p.add_argument("--child", nargs=5, metavar=("METHOD", "PATH", "K", "ITERATIONS", "SEED"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.alone_repeats < 1:
        p.error("--alone-repeats must be at least 1")
    if args.child:
        method, path, k, iterations, seed = args.child
        child(method, path, int(k), int(iterations), int(seed))
        return

    import faiss
    import torch

    print(f"{os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"faiss {faiss.__version__}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}; {load_line()}",
          flush=True)
    summary = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases.split(","):
            n, k, repeats = ([int(v) for v in case.split(":")] + [1])[:3]
            it = args.iterations
            print(f"\n{n:,} patches x 27, k={k}, {it} iterations", flush=True)
            head = (f"{'run':<30}{'wall s':>8}{'ratio':>8}{'cpu s':>8}{'ratio':>8}{'peak MB':>9}{'objective':>10}  detail")
            print(head + "\n" + "-" * len(head), flush=True)
            plains, hgms = [], []
            for rep in range(repeats):
                order = ["plain", "hgm"] if rep % 2 == 0 else ["hgm", "plain"]
                for what in order:
                    if what == "plain":
                        plains.append(plain_faiss(args.data, n, k, it, f"{tmp}/plain.npy"))
                        print(fmt_row(f"  plain FAISS script #{rep + 1}", plains[-1], None), flush=True)
                    else:
                        hgms.append(hgm_cluster(args.data, n, k, it, f"{tmp}/hgm.npz"))
                        print(fmt_row(f"  hgm cluster (auto) #{rep + 1}", hgms[-1], None), flush=True)
            plain = min(plains, key=lambda r: r["wall"])
            hgm = min(hgms, key=lambda r: r["wall"])
            greedy = hgm_cluster(args.data, n, k, it, f"{tmp}/greedy.npz", init="kmeans++")
            print(fmt_row("plain FAISS script (best)", plain, None))
            print(fmt_row("hgm cluster, init auto (best)", hgm, plain))
            print(fmt_row("hgm cluster, init kmeans++", greedy, plain), flush=True)

            path = f"{tmp}/patches.npy"
            np.save(path, hgm_patches(args.data, n, args.seed))
            methods = ["torch", *(["faiss", "sklearn"] if n <= args.alone_max_n else [])]
            alone = {}
            print(f"\n  k-means alone on the same {n:,} patches ({n * 27 * 4 / 2**20:,.0f} MB), fresh process each:")
            for m in methods:
                runs = [run_process([sys.executable, "benchmarks/kmeans.py", "--child", m, path, str(k), str(it),
                                     str(args.seed)]) for _ in range(args.alone_repeats)]
                r = alone[m] = sorted(runs, key=lambda r: r["working_mb"])[len(runs) // 2]  # the median run
                spread = ", ".join(f"{x['working_mb']:.1f}" for x in runs)
                print(f"  {m:<12}{r['seconds']:>8.1f} s  cpu {r['cpu_inproc']:>7.1f} s  objective {r['objective']:.5f}  "
                      f"working memory {r['working_mb']:>6.1f} MB ({1 + r['working_mb'] / r['patches_mb']:.2f}x patches; "
                      f"runs {spread} MB)  {r['detail']}", flush=True)
            summary.append((n, k, plain, hgm, greedy, alone))
            print(f"  {load_line()}", flush=True)

    print("\ntargets (issue 16):")
    for n, k, plain, hgm, greedy, alone in summary:
        bound = 1.2 if n <= 300_000 else 1.5
        ratio, cratio = hgm["wall"] / plain["wall"], hgm["cpu"] / plain["cpu"]
        gap = hgm["objective"] / greedy["objective"] - 1
        seed_share = hgm["stats"]["seconds_seed"] / hgm["wall"]
        torch_mem = 1 + alone["torch"]["working_mb"] / alone["torch"]["patches_mb"] if "torch" in alone else float("nan")
        ok = lambda c: "ok  " if c else "MISS"
        print(f"  {n:>9,} k={k:<5} {ok(ratio <= bound)} whole command / plain script {ratio:.2f}x wall "
              f"({cratio:.2f}x CPU), target <= {bound}x")
        print(f"  {'':>17} {ok(gap <= 0.005)} objective vs greedy k-means++ {gap * 100:+.2f} %, target <= +0.5 %")
        print(f"  {'':>17} {ok(seed_share <= 0.25)} seeding {hgm['stats']['seconds_seed']:.1f} s = "
              f"{seed_share * 100:.1f} % of the command (target <= 25 % at 2M)")
        print(f"  {'':>17} {ok(torch_mem <= 1.2)} k-means peak = {torch_mem:.2f}x the patches' size (target <= 1.2x)")
    print(load_line())


if __name__ == "__main__":
    main()
