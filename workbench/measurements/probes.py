"""Position probes (scikit-learn): how much absolute position the residual stream carries, per layer.

RoPE adds no position to the residual stream, so whatever a linear probe recovers was computed by the
model (e.g. from causal attention). From the residual stream at each site (layer -1 = embeddings, l = after
block l) to the absolute position: ridge regression on log(1 + position) (held-out R^2) and logistic
classification into equal-width position buckets (held-out accuracy, chance = the majority bucket's share).
Train/test split by window (held-out windows), never by token within a window.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from workbench import checkpoints as ck
from workbench import store
from workbench.config import DataConfig
from workbench.measurements.capture import capture, per_checkpoint, probe_batch
from workbench.measurements.scores import checkpoint_coords


def fit_probes(
    features: np.ndarray,
    positions: np.ndarray,
    groups: np.ndarray,
    *,
    n_buckets: int,
    seq_len: int,
    seed: int = 0,
    max_train: int = 4000,
) -> dict[str, float]:
    """Fit both probes on one site's features [N, hidden] -> held-out r2, accuracy and chance accuracy."""
    from sklearn.linear_model import LogisticRegression, RidgeCV  # lazy: scikit-learn only for probes (seconds)
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.model_selection import GroupShuffleSplit
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    split = GroupShuffleSplit(n_splits=1, test_size=0.25, random_state=seed)
    train, test = next(split.split(features, positions, groups))
    rng = np.random.default_rng(seed)
    if len(train) > max_train:
        train = np.sort(rng.choice(train, max_train, replace=False))
    y_reg = np.log1p(positions.astype(np.float64))
    y_cls = np.minimum(positions * n_buckets // seq_len, n_buckets - 1)
    with threadpool_limits(1):  # two BLAS threads next to a busy neighbour are many times slower
        reg = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 4, 13)))
        reg.fit(features[train], y_reg[train])
        r2 = r2_score(y_reg[test], reg.predict(features[test]))
        cls = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=500))  # C=0.1 converges
        cls.fit(features[train], y_cls[train])
        acc = accuracy_score(y_cls[test], cls.predict(features[test]))
    chance = np.bincount(y_cls[test], minlength=n_buckets).max() / len(test)
    return {"r2": float(r2), "accuracy": float(acc), "chance": float(chance)}


def model_probes(model, batch, *, n_buckets: int, seed: int = 0, max_train: int = 4000) -> dict[str, np.ndarray]:
    """Probe scores of one model at every residual site: {r2: [L+1], accuracy: [L+1], chance: [L+1]}."""
    cap = capture(model, batch, qk=False, resid=True)
    b, t = batch["input_ids"].shape
    positions = batch["position_ids"].reshape(-1).numpy()
    groups = np.repeat(np.arange(b), t)
    rows = [
        fit_probes(
            r.reshape(b * t, -1).double().numpy(),
            positions,
            groups,
            n_buckets=n_buckets,
            seq_len=int(positions.max()) + 1,
            seed=seed,
            max_train=max_train,
        )
        for r in cap.resid
    ]
    return {k: np.array([row[k] for row in rows]) for k in ("r2", "accuracy", "chance")}


def position_probes(
    paths: Sequence[str | Path],
    *,
    seq_len: int = 512,
    n_windows: int = 8,
    n_buckets: int = 8,
    seed: int = 0,
    max_train: int = 4000,
    data: DataConfig | None = None,
    device: str = "cpu",
    progress: bool = False,
    inputs=None,
) -> xr.Dataset:
    """Held-out probe scores per checkpoint and residual site: dims (checkpoint, layer); ``layer`` l is the
    output of block l, as in every group, and -1 the embeddings (coordinate ``site``)."""
    if n_windows < 4:
        raise ValueError(f"position probes need at least 4 windows (held-out split by window), got {n_windows}")
    if n_buckets < 2:
        raise ValueError(f"position probes need at least 2 buckets, got {n_buckets}")
    infos = ck.inspect_all(paths, minimum=1)
    batch = probe_batch(seq_len, n_windows, seed, data) if inputs is None else inputs  # inputs: workbench.inputs
    per = per_checkpoint(
        infos,
        lambda m: model_probes(m, batch, n_buckets=n_buckets, seed=seed, max_train=max_train),
        progress=progress,
        desc="position probes",
        device=device,
    )
    n_layers = infos[0].num_layers
    ds = xr.Dataset(
        {k: (("checkpoint", "layer"), np.stack([r[k] for r in per])) for k in ("r2", "accuracy", "chance")},
        coords={
            **checkpoint_coords(infos),
            "layer": np.arange(-1, n_layers),
            "site": ("layer", np.array(["embed"] + [f"block {i}" for i in range(n_layers)], dtype=object)),
        },
    )
    ds["r2"].attrs["description"] = "held-out R^2 of ridge regression residual -> log(1 + position)"
    ds["accuracy"].attrs["description"] = (
        f"held-out accuracy of logistic regression into {n_buckets} equal-width position buckets"
    )
    ds["chance"].attrs["description"] = "share of the most frequent bucket among held-out tokens"
    ds.attrs.update(
        store.provenance(
            analysis="position_probes",
            seq_len=seq_len,
            n_windows=n_windows,
            n_buckets=n_buckets,
            seed=seed,
            max_train=max_train,
            split="GroupShuffleSplit by window, test_size 0.25",
            models="StandardScaler+RidgeCV(alphas 1e-2..1e4); StandardScaler+LogisticRegression(C=0.1)",
        )
    )
    return ds
