"""Metrics that test the paper's claims.

* Classification: accuracy, per-class accuracy, confusion matrix.
* Latent recovery on synthetic data (Lemma 7): block j (from the bottom)
  clusters the s x s patches of the level-(i+1) map, i = d-1-j; each such
  patch is the manifestation of one level-i pixel, drawn from S_c. Exact
  recovery means the block's cluster assignment is a relabelling of the true
  patch identity (the generator's ``patch_<i+1>``): ``ari`` is the adjusted
  Rand index between the two. Where the block has a trained embedding K,
  ``ari_class`` clusters the embedded positions into |C_i| groups and scores
  them against the level-i semantic classes (``latent_<i>``) — what Theorem 1
  says a "trivial clustering" of the embedding recovers.
* Theorem 1 separation per trained block: the largest distance between
  embeddings of two positions of the same level-i class vs the smallest
  distance between embeddings of different classes."""

from __future__ import annotations

import numpy as np
import torch

from .network import Network


def classification_metrics(pred: np.ndarray, y: np.ndarray, label_names: list[str]) -> dict:
    n_classes = len(label_names)
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (y, pred), 1)
    support = confusion.sum(axis=1)
    per_class = {
        name: (float(confusion[i, i] / support[i]) if support[i] else None) for i, name in enumerate(label_names)
    }
    return {
        "accuracy": float((pred == y).mean()) if len(y) else float("nan"),
        "n": int(len(y)),
        "per_class_accuracy": per_class,
        "confusion": confusion.tolist(),
        "label_names": list(label_names),
    }


def block_outputs(net: Network, images: np.ndarray, device: torch.device, batch_size: int = 256):
    """Per block: (cluster assignment (N, h, w) int64, block output (N, C, h, w) float32)."""
    assigns: list[list[np.ndarray]] = [[] for _ in net.blocks]
    outs: list[list[np.ndarray]] = [[] for _ in net.blocks]
    net = net.to(device).eval()
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = net.preprocess(torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).to(device))
            for j, block in enumerate(net.blocks):
                if hasattr(block, "cluster"):  # learned conv blocks (baselines) assign nothing
                    assigns[j].append(block.cluster.similarity(x).argmax(dim=1).cpu().numpy())
                x = block(x)
                outs[j].append(x.float().cpu().numpy())
    return [(np.concatenate(a) if a else None, np.concatenate(o)) for a, o in zip(assigns, outs)]


def _unique_embeddings(emb: np.ndarray, labels: np.ndarray, rng: np.random.Generator, cap: int = 4000):
    """Distinct (embedding, label) pairs — few for one-hot blocks; a sample otherwise."""
    keys = np.round(emb, 5)
    _, first = np.unique(np.concatenate([keys, labels[:, None]], axis=1), axis=0, return_index=True)
    if len(first) > cap:
        first = rng.choice(first, cap, replace=False)
    return emb[first], labels[first]


def separation(emb: np.ndarray, labels: np.ndarray) -> dict:
    """Theorem 1: max intra-class vs min inter-class Euclidean distance."""
    d = np.sqrt(np.maximum(((emb[:, None, :] - emb[None, :, :]) ** 2).sum(-1), 0.0))
    same = labels[:, None] == labels[None, :]
    off_diag = ~np.eye(len(labels), dtype=bool)
    intra = d[same & off_diag]
    inter = d[~same]
    max_intra = float(intra.max()) if intra.size else 0.0
    min_inter = float(inter.min()) if inter.size else float("inf")
    return {"max_intra": max_intra, "min_inter": min_inter, "separated": bool(max_intra < min_inter)}


def latent_recovery(
    net: Network, images: np.ndarray, latents: dict[str, np.ndarray], model: dict, device: torch.device, *, seed: int = 0
) -> tuple[list[dict], list[dict]]:
    """(latent_recovery entries, separation entries) for a synthetic dataset.

    ``latents`` holds "latent_<i>" (N, m_i, m_i) and "patch_<i>" arrays aligned
    with ``images``; ``model`` the generative model's params (depth, classes)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(seed)
    d = int(model["depth"])
    recovery, seps = [], []
    for j, (assign, out) in enumerate(block_outputs(net, images, device)):
        level = d - 1 - j
        if level < 0:
            break
        entry: dict = {"level": level, "block": j + 1, "ari": None, "ari_class": None}
        patch_ids = latents.get(f"patch_{level + 1}")
        if assign is not None and patch_ids is not None and patch_ids.shape == assign.shape:
            entry["ari"] = float(adjusted_rand_score(patch_ids.ravel(), assign.ravel()))
        classes = latents.get(f"latent_{level}")
        block = net.blocks[j]
        trained = isinstance(getattr(block, "proj", None), torch.nn.Conv2d)
        if trained and classes is not None and classes.shape == out.shape[:1] + out.shape[2:]:
            emb = out.transpose(0, 2, 3, 1).reshape(-1, out.shape[1])
            lab = classes.ravel()
            u_emb, u_lab = _unique_embeddings(emb, lab, rng)
            n_cls = int(model["classes"][level])
            km = KMeans(n_clusters=min(n_cls, len(u_emb)), n_init=10, random_state=seed).fit(u_emb)
            pick = rng.choice(len(emb), min(len(emb), 200_000), replace=False)
            entry["ari_class"] = float(adjusted_rand_score(lab[pick], km.predict(emb[pick])))
            seps.append({"block": j + 1, "level": level, **separation(u_emb, u_lab)})
        recovery.append(entry)
    return recovery, seps
