"""Predictions over batches (launch/inference.py, which holds the split) and the worker loop's
streaming validation (``validate_streaming``: bounded memory, one all-reduce). Validation on N
ranks scores every batch exactly once and sums the per-batch statistics in batch order, so its
metrics equal one rank's over the same split, bit for bit."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist

from ple_adatt.data.targets import original_units
from ple_adatt.model.sidecars import sidecars_of
from ple_adatt.train.metrics import SCORE_BINS
from ple_adatt.train.step import autocast_context


@torch.no_grad()
def predict_parts(model, batches, tasks: list[str], device, keep=lambda i: True, cfg=None) -> list[tuple[int, dict]]:
    """[(batch index, {task: {"logits", "label", "mask"[, "oracle"][, evidential "u", ...]}})] numpy,
    for the batches kept (the evidential keys: model/sidecars.py Sidecars.uncertainty_arrays)."""
    model.eval()
    side = sidecars_of(model)
    parts = []
    for i, batch in enumerate(batches):
        if not keep(i):
            continue
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        with autocast_context(cfg, device) if cfg is not None else torch.autocast(device.type, enabled=False):
            out = model(batch)
        one = {}
        for t in tasks:
            arrays = {"logits": out[t].float(), "label": batch[f"label/{t}"], "mask": batch[f"mask/{t}"]}
            if f"oracle/{t}" in batch:
                arrays["oracle"] = batch[f"oracle/{t}"]
            if side is not None:
                arrays |= side.uncertainty_arrays(t)
            one[t] = {k: v.detach().cpu().numpy() for k, v in arrays.items()}
        parts.append((i, one))
    return parts


def concat_parts(parts: list[tuple[int, dict]]) -> dict:
    """Batches in index order -> {task: {key: array over all rows}}."""
    parts = sorted(parts, key=lambda p: p[0])
    if not parts:
        return {}
    return {t: {k: np.concatenate([p[t][k] for _, p in parts]) for k in parts[0][1][t]} for t in parts[0][1]}


def predict_batches(model, batches, tasks: list[str], device, keep=lambda i: True, cfg=None) -> dict:
    """Run the model over batches; returns {task: {"logits", "label", "mask"[, "oracle"]}} numpy."""
    return concat_parts(predict_parts(model, batches, tasks, device, keep, cfg))


class StreamingValidation:
    """Validation metrics and loss from sufficient statistics, never holding the split
    (docs/streaming-metrics.md).

    Per batch (``update``) every task adds two kinds of numbers:
    * counts (exact integers, any summation order): labelled rows, oracle NaNs, per-class true /
      predicted / correct counts (accuracy, macro-F1), top-3 hits, and the score histograms of
      binary tasks (model and oracle, ``SCORE_BINS`` bins of positives and negatives each);
    * float sums (loss × rows, log-loss, |e|, e², y, y²), kept as one small row per batch.
    ``merge`` adds every rank's counts and per-batch rows in ONE all-reduce (a rank leaves the other
    ranks' rows at zero, and x + 0 is exact), then the rows are summed in batch order: N ranks give
    one rank's metrics bit for bit. Memory: O(tasks × bins) for the counts, plus
    O(batches × float sums per batch) — about 1 KB per 4096-row batch — for the rows.

    Binary AUC / PR-AUC come from the histograms (train/metrics.histogram_auc), within a bound
    computed from the same histograms; everything else equals the exact metric up to float
    summation order."""

    def __init__(self, cfg, bins: int = SCORE_BINS, targets: dict[str, dict] | None = None):
        self.cfg, self.bins, self.targets = cfg, bins, targets or {}
        self.tasks = cfg.task_names()
        self.types = {t: cfg.dataset.task(t).type for t in self.tasks}
        self.float_slots: dict[str, dict[str, int]] = {}
        self.count_slots: dict[str, dict[str, slice]] = {}
        self.n_float = self.n_count = 0
        self.classes: dict[str, int] = {}
        self.rows: list[tuple[int, np.ndarray]] = []
        self.seen = 0
        self._layout()

    def _layout(self) -> None:
        """Named slots per task: the same on every rank, whether or not it scores a batch."""
        from ple_adatt.train.build import task_output_dims

        dims = task_output_dims(self.cfg)

        def f(task, *names):
            self.float_slots[task] = {k: self.n_float + i for i, k in enumerate(names)}
            self.n_float += len(names)

        def c(task, **sizes):
            self.count_slots[task] = {}
            for k, n in sizes.items():
                self.count_slots[task][k] = slice(self.n_count, self.n_count + n)
                self.n_count += n

        evidential = self.cfg.model.evidential
        for t in self.tasks:
            kind = self.types[t]
            extra = _extra_slots(kind, dims[t], evidential.enabled and kind in evidential.task_types)
            if kind == "binary":
                f(t, "loss", "logloss", "oracle_logloss", *extra)
                c(t, n=1, oracle_n=1, oracle_nan=1, hist=2 * self.bins, oracle_hist=2 * self.bins)
            elif kind in ("multiclass", "contrastive"):
                k = self.classes[t] = dims[t]
                f(t, "loss", "logloss", "oracle_logloss", *extra)
                c(t, n=1, oracle_n=1, oracle_nan=1, **{f"{p}{q}": k for p in ("", "oracle_") for q in ("true", "pred", "hit")},
                  top3=1, oracle_top3=1)
            else:
                f(t, "loss", "abs", "sq", "y", "y2", "oracle_abs", "oracle_sq", *extra)
                c(t, n=1, oracle_n=1, oracle_nan=1)
        self.counts = np.zeros(self.n_count, dtype=np.float64)

    def update(self, index: int, out: dict, batch: dict, unc: dict | None = None) -> None:
        """Add batch ``index`` (model outputs {task: logits}, the batch's label/mask/oracle tensors, and
        the evidential heads' per-row arrays {task: {"u", "evi_prob" | "evi_mu", ...}} when present)."""
        from ple_adatt.losses.task_losses import TASK_LOSSES
        from ple_adatt.train.metrics import logit, score_bins, sigmoid, softmax

        row = np.zeros(self.n_float, dtype=np.float64)
        for t in self.tasks:
            fs, cs, kind = self.float_slots[t], self.count_slots[t], self.types[t]
            mask_t = batch[f"mask/{t}"].bool()
            s = self.cfg.task_settings(t)
            loss = TASK_LOSSES[self.cfg.task_loss(t)](out[t].float(), batch[f"label/{t}"], mask_t,
                                                      focal_alpha=s.focal_alpha, focal_gamma=s.focal_gamma,
                                                      huber_delta=s.huber_delta)
            mask = mask_t.cpu().numpy()
            n = int(mask.sum())
            if n == 0:
                continue
            row[fs["loss"]] = float(loss) * n
            self.counts[cs["n"]] += n
            z = out[t].float().detach().cpu().numpy()[mask].astype(np.float64)
            y = batch[f"label/{t}"].cpu().numpy()[mask]
            arrays = {k: v.detach().float().cpu().numpy()[mask].astype(np.float64) for k, v in (unc or {}).get(t, {}).items()}
            _add_extras(row, fs, kind, z, y, arrays, self.cfg.model.evidential.interval)  # model units
            if kind == "regression" and self.targets.get(t):  # metrics in the label's original units
                z, y = original_units(self.targets[t], z), original_units(self.targets[t], y)
            oracle = batch.get(f"oracle/{t}")
            o = None
            if oracle is not None:
                o = oracle.cpu().numpy()[mask].astype(np.float64)
                nan = int(np.isnan(o).reshape(n, -1).any(axis=1).sum())
                self.counts[cs["oracle_nan"]] += nan
                if nan:
                    o = None
                else:
                    self.counts[cs["oracle_n"]] += n
            if kind == "binary":
                y = y.astype(np.int64)
                for prefix, scores in (("", z), ("oracle_", None if o is None else logit(o))):
                    if scores is None:
                        continue
                    p = np.clip(sigmoid(scores) if not prefix else o, 1e-7, 1 - 1e-7)
                    row[fs[f"{prefix}logloss"]] = -(y * np.log(p) + (1 - y) * np.log1p(-p)).sum()
                    self.counts[cs[f"{prefix}hist"]] += np.bincount(score_bins(scores, self.bins) + self.bins * y,
                                                                    minlength=2 * self.bins)
            elif kind in ("multiclass", "contrastive"):
                y = y.astype(np.int64)
                k = self.classes[t]
                for prefix, prob in (("", softmax(z)), ("oracle_", o)):
                    if prob is None:
                        continue
                    pred = prob.argmax(1)
                    self.counts[cs[f"{prefix}true"]] += np.bincount(y, minlength=k)
                    self.counts[cs[f"{prefix}pred"]] += np.bincount(pred, minlength=k)
                    self.counts[cs[f"{prefix}hit"]] += np.bincount(y[pred == y], minlength=k)
                    top = np.argsort(-prob, axis=1)[:, : min(3, k)]
                    self.counts[cs[f"{prefix}top3"]] += (top == y[:, None]).any(1).sum()
                    p = np.clip(prob, 1e-7, 1.0)
                    p = p / p.sum(1, keepdims=True)  # as sklearn's log_loss renormalises
                    row[fs[f"{prefix}logloss"]] = -np.log(p[np.arange(n), y]).sum()
            else:
                y = y.astype(np.float64)
                row[fs["y"]], row[fs["y2"]] = y.sum(), (y * y).sum()
                for prefix, pred in (("", z), ("oracle_", o)):
                    if pred is not None:
                        err = pred - y
                        row[fs[f"{prefix}abs"]], row[fs[f"{prefix}sq"]] = np.abs(err).sum(), (err * err).sum()
        self.rows.append((index, row))

    def merge(self, world: int) -> None:
        """Every rank calls it after its last batch (all ranks iterated the same ``seen`` batches)."""
        if world > 1:
            flat = torch.zeros(self.n_count + self.seen * self.n_float, dtype=torch.float64)
            flat[: self.n_count] = torch.from_numpy(self.counts)
            per_batch = flat[self.n_count:].view(self.seen, self.n_float)
            for i, row in self.rows:
                per_batch[i] = torch.from_numpy(row)
            dist.all_reduce(flat)
            self.counts = flat[: self.n_count].numpy().copy()
            self.rows = list(enumerate(per_batch.numpy().copy()))
        else:  # the same layout, so one rank sums exactly the matrix N ranks would
            per_batch = np.zeros((self.seen, self.n_float))
            for i, row in self.rows:
                per_batch[i] = row
            self.rows = list(enumerate(per_batch))

    def compute(self) -> dict[str, float]:
        """{"loss", "<task>/loss"} (validation_loss's keys) + evaluate_predictions' keys."""
        from ple_adatt.train.metrics import flat_metrics, histogram_auc, with_oracle

        sums = np.add.reduce(np.stack([r for _, r in self.rows]), axis=0) if self.rows else np.zeros(self.n_float)
        out, per_task, total = {}, {}, 0.0
        for t in self.tasks:
            fs, cs, kind = self.float_slots[t], self.count_slots[t], self.types[t]
            F = {k: float(sums[i]) for k, i in fs.items()}
            C = {k: self.counts[s] for k, s in cs.items()}
            n = float(C["n"][0])
            out[f"{t}/loss"] = F["loss"] / max(n, 1.0)
            total += self.cfg.task_settings(t).weight * out[f"{t}/loss"]
            if n == 0:
                continue
            has_oracle = C["oracle_nan"][0] == 0 and C["oracle_n"][0] == n
            if kind == "binary":
                def binary(prefix):
                    h = C[f"{prefix}hist"]
                    auc, ap, _, _ = histogram_auc(h[self.bins:], h[: self.bins])
                    return {"auc": auc, "pr_auc": ap, "logloss": F[f"{prefix}logloss"] / n}
                m, o = binary(""), binary("oracle_") if has_oracle else None
            elif kind in ("multiclass", "contrastive"):
                def multi(prefix):
                    tp, pr, tr = C[f"{prefix}hit"], C[f"{prefix}pred"], C[f"{prefix}true"]
                    denom = pr + tr
                    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
                    return {"accuracy": float(tp.sum() / n), "macro_f1": float(f1.mean()),
                            "top3": float(C[f"{prefix}top3"][0] / n), "logloss": F[f"{prefix}logloss"] / n}
                m, o = multi(""), multi("oracle_") if has_oracle else None
            else:
                var = F["y2"] / n - (F["y"] / n) ** 2

                def reg(prefix):
                    mse = F[f"{prefix}sq"] / n
                    return {"mae": F[f"{prefix}abs"] / n, "rmse": math.sqrt(mse),
                            "r2": 1 - mse / var if var > 0 else math.nan}
                m, o = reg(""), reg("oracle_") if has_oracle else None
            per_task[t] = (n, with_oracle(m, o))
            out.update({f"{t}/{k}": v for k, v in _extras(F, kind, n).items()})
        out["loss"] = total
        return {**out, **flat_metrics(self.types, per_task)}


@torch.no_grad()
def validate_streaming(raw_model, batches, cfg, device, rank: int = 0, world: int = 1,
                       bins: int = SCORE_BINS, targets: dict[str, dict] | None = None) -> dict[str, float]:
    """Validation metrics over ``batches`` on ``world`` ranks (rank r scores batches i % world == r),
    merged with one all-reduce; every rank returns the same dict. Runs the unwrapped module: the
    ranks score different batches, and DDP's forward would wait for a collective the others never join."""
    raw_model.eval()
    acc = StreamingValidation(cfg, bins, targets)
    side = sidecars_of(raw_model)
    for i, batch in enumerate(batches):
        acc.seen += 1
        if i % world != rank:
            continue
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        with autocast_context(cfg, device):
            out = raw_model(batch)
        acc.update(i, out, batch, {t: side.uncertainty_arrays(t) for t in acc.tasks} if side is not None else None)
    acc.merge(world)
    return acc.compute()


# ---- Per-task extras as per-batch sums: prediction spread (collapse flags, train/monitor.py) and
# calibration (train/calibration.py), in model units, the same values the exact functions give. ----
ECE_BINS = 15
"""Confidence bins of the expected calibration error (train/calibration.expected_calibration_error)."""


def _extra_slots(kind: str, dim: int, evidential: bool) -> list[str]:
    """Float-slot names of the extras of one task (the same on every rank)."""
    k = dim if kind in ("multiclass", "contrastive") else 1
    names = [f"spread_s1_{c}" for c in range(k)] + [f"spread_s2_{c}" for c in range(k)]
    if kind in ("binary", "multiclass"):
        names += [f"ece_{q}_{b}" for q in ("n", "conf", "hit") for b in range(ECE_BINS)]
        if evidential:
            names += [f"evi_ece_{q}_{b}" for q in ("n", "conf", "hit") for b in range(ECE_BINS)]
    if evidential:
        names += ["u"] + (["covered", "width"] if kind == "regression" else [])
    return names


def _ece_sums(row, fs, prefix: str, prob: np.ndarray, y: np.ndarray) -> None:
    from ple_adatt.train.calibration import ece_bins

    if prob.ndim == 1:
        prob = np.stack([1 - prob, prob], axis=1)
    conf = prob.max(1)
    hit = (prob.argmax(1) == y.astype(np.int64)).astype(np.float64)
    idx = ece_bins(conf, ECE_BINS)
    for q, w in (("n", np.ones_like(conf)), ("conf", conf), ("hit", hit)):
        sums = np.bincount(idx, weights=w, minlength=ECE_BINS)
        for b in range(ECE_BINS):
            row[fs[f"{prefix}_{q}_{b}"]] = sums[b]


def _add_extras(row, fs, kind: str, z: np.ndarray, y: np.ndarray, arrays: dict, interval: float) -> None:
    """One batch's labelled rows: z logits [n(, C)], y labels [n], arrays the evidential outputs."""
    from ple_adatt.train.calibration import nig_interval
    from ple_adatt.train.metrics import sigmoid, softmax

    if kind in ("multiclass", "contrastive"):
        x = z - z.max(1, keepdims=True)
        x = x - np.log(np.exp(x).sum(1, keepdims=True))  # log-probabilities, as prediction_spread takes them
    else:
        x = z.reshape(len(z), -1)
    for c in range(x.shape[1]):
        row[fs[f"spread_s1_{c}"]], row[fs[f"spread_s2_{c}"]] = x[:, c].sum(), (x[:, c] ** 2).sum()
    if kind in ("binary", "multiclass"):
        _ece_sums(row, fs, "ece", sigmoid(z.reshape(-1)) if kind == "binary" else softmax(z), y)
        if "evi_prob" in arrays:
            _ece_sums(row, fs, "evi_ece", arrays["evi_prob"], y)
    if "u" in arrays and "u" in fs:
        row[fs["u"]] = arrays["u"].sum()
    if kind == "regression" and "evi_mu" in arrays and "covered" in fs:
        lo, hi = nig_interval(*(arrays[f"evi_{k}"].reshape(-1) for k in ("mu", "v", "alpha", "beta")), interval)
        yy = y.astype(np.float64).reshape(-1)
        row[fs["covered"]], row[fs["width"]] = ((yy >= lo) & (yy <= hi)).sum(), (hi - lo).sum()


def _extras(F: dict[str, float], kind: str, n: float) -> dict[str, float]:
    """{"spread", "ece"[, "evi_ece", "u_mean", "coverage", "interval_width"]} from a task's summed slots."""
    out = {}
    k = sum(1 for name in F if name.startswith("spread_s1_"))
    if n >= 2:
        stds = [math.sqrt(max(0.0, F[f"spread_s2_{c}"] / n - (F[f"spread_s1_{c}"] / n) ** 2)) for c in range(k)]
        out["spread"] = float(np.mean(stds))
    else:
        out["spread"] = math.nan
    for prefix in ("ece", "evi_ece"):
        if f"{prefix}_n_0" in F:
            total = sum(F[f"{prefix}_n_{b}"] for b in range(ECE_BINS))
            out[prefix] = float(sum(abs(F[f"{prefix}_hit_{b}"] - F[f"{prefix}_conf_{b}"]) for b in range(ECE_BINS))
                                / total) if total else math.nan
    if "u" in F:
        out["u_mean"] = F["u"] / n
    if "covered" in F:
        out["coverage"], out["interval_width"] = F["covered"] / n, F["width"] / n
    return out
