"""Synthetic customers, part 2: the 16 seed tasks drawn from *observed* features.

Every label is a draw from a distribution whose parameters are an exact function of the
written feature columns (never of the latents), so the stored oracle columns are the
Bayes-optimal predictions: P(y=1|x) (binary), class probabilities (multiclass), E[y|x]
(regression).

Task correlation (MMoE paper, Ma et al. 2018, synthetic study): per task group the first
scalar task is the *anchor*, its signal U = V_anchor(x). Every other task t of the group uses
    s_t = rho * U + sqrt(1 - rho^2) * V_t(x)
so corr(s_anchor, s_t) ~= rho (negative rho = conflicting tasks). Multiclass tasks take the
shared part as rho * U * c_k with class directions c = linspace(-1, 1, K). DAG dependencies
(CTR->CVR->LTV, Churn->Retention, NBA->Spending_category->Brand) condition on the parent's
drawn *label*; the oracles marginalise over the parent exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import brentq

from .synthetic_population import (CHANNELS, N_CATEGORIES, N_CYCLES, REGIONS, World,
                                   _draw_categorical, _sigmoid, _softmax)

# name, type, group, hmm_mode, num_classes (seed spec §2.1, the 16 active tasks)
TASKS: tuple[tuple[str, str, str, str, int | None], ...] = (
    ("ctr", "binary", "engagement", "journey", None),
    ("cvr", "binary", "engagement", "journey", None),
    ("engagement", "regression", "engagement", "journey", None),
    ("churn", "binary", "lifecycle", "lifecycle", None),
    ("retention", "binary", "lifecycle", "lifecycle", None),
    ("life_stage", "multiclass", "lifecycle", "lifecycle", 6),
    ("ltv", "regression", "lifecycle", "lifecycle", None),
    ("balance_util", "regression", "value", "behavior", None),
    ("channel", "multiclass", "value", "behavior", 3),
    ("timing", "multiclass", "value", "behavior", 28),
    ("nba", "multiclass", "consumption", "behavior", 12),
    ("spending_category", "multiclass", "consumption", "behavior", N_CATEGORIES),
    ("consumption_cycle", "multiclass", "consumption", "behavior", N_CYCLES),
    ("spending_bucket", "regression", "consumption", "behavior", None),
    ("brand_prediction", "contrastive", "consumption", "behavior", None),   # K = n_brands
    ("merchant_affinity", "regression", "consumption", "behavior", None),
)
ANCHORS = {"engagement": "ctr", "lifecycle": "churn", "value": "balance_util", "consumption": "spending_bucket"}
GROUPS = tuple(ANCHORS)
# Scalar task signals V_t: (weight, term); a term "a*b" is a product of standardised bases.
SCALAR_TERMS = {
    "ctr": [(0.8, "s_trend"), (0.6, "j_adv"), (0.5, "t_logins"), (0.4, "c_proj0"), (0.4, "s_trend*t_logins"), (0.3, "p_app")],
    "cvr": [(0.7, "t_income"), (0.5, "s_burst"), (0.4, "p_tier"), (0.4, "c_proj1")],
    "engagement": [(0.7, "t_logins"), (0.6, "s_weekly"), (0.5, "j_adv"), (0.3, "t_txn")],
    "churn": [(0.9, "s_recency"), (0.7, "l_risk"), (-0.5, "t_tenure"), (-0.5, "s_trend"), (0.4, "d_vol"),
              (-0.3, "s_recency*t_products")],
    "retention": [(0.6, "t_tenure"), (0.5, "t_products"), (0.4, "l_new"), (0.3, "p_affluent")],
    "ltv": [(0.7, "t_balance"), (0.5, "t_income"), (0.4, "t_tenure"), (0.3, "h_depth")],
    "balance_util": [(0.7, "t_spend"), (-0.5, "t_limit"), (0.5, "d_vol"), (-0.4, "t_savings"), (0.3, "t_spend*d_vol")],
    "spending_bucket": [(0.8, "t_spend"), (0.5, "s_burst"), (0.4, "h_depth"), (0.4, "d_loops")],
    "merchant_affinity": [(0.7, "h_depth"), (0.6, "c_proj1"), (0.4, "s_burst")],
}
HMM_BASES = {"j_adv": "journey", "l_risk": "lifecycle", "l_new": "lifecycle"}   # zero when the HMM row is missing
RETENTION_IF_CHURNED = 0.05   # P(retained | churned): the inverse edge Churn -> Retention


def scalar_bases(f: dict[str, np.ndarray], world: World) -> dict[str, np.ndarray]:
    """Raw (unstandardised) scalar bases [N] computed from observed columns only."""
    seq = f["txn_seq"]                                    # [N, T, 4]
    count, lc = seq[..., 0], np.log1p(seq[..., 0])
    t = seq.shape[1]
    last = t - 1 - np.argmax(count[:, ::-1] > 0, axis=1)
    weekly = np.abs((count * np.exp(-2j * np.pi * np.arange(t) / 7)).sum(1)) / (count.sum(1) + 1)
    h_norm = np.linalg.norm(f["hierarchy"], axis=1)
    c_proj = f["collaborative"] @ world.collab_dirs.T     # [N, 2]
    return {
        "t_age": f["age"], "t_income": np.log(f["income"]), "t_tenure": np.log1p(f["tenure_months"]),
        "t_products": f["num_products"], "t_balance": np.log(f["balance"]), "t_limit": np.log(f["credit_limit"]),
        "t_spend": np.log1p(f["spend_30d"]), "t_txn": np.log1p(f["txn_count_30d"]),
        "t_logins": np.log1p(f["digital_logins_30d"]), "t_savings": f["savings_rate"],
        "p_tier": f["card_tier"].astype(float), "p_app": (f["preferred_channel"] == "app").astype(float),
        "p_affluent": np.isin(f["segment"], ["affluent", "private"]).astype(float),
        "s_trend": lc[:, -7:].mean(1) - lc[:, :-7].mean(1),
        "s_weekly": weekly,
        "s_recency": np.where(count.max(1) > 0, t - 1 - last, t).astype(float),
        "s_burst": count.max(1) / (count.mean(1) + 1),
        "h_depth": np.arctanh(np.minimum(h_norm, 0.999)),
        "d_vol": f["tda"][:, N_CYCLES:N_CYCLES + 4].mean(1), "d_loops": f["tda"][:, 15],
        "c_proj0": c_proj[:, 0], "c_proj1": c_proj[:, 1],
        "j_adv": f["hmm_journey"][:, 3] + f["hmm_journey"][:, 4],
        "l_risk": f["hmm_lifecycle"][:, 4], "l_new": f["hmm_lifecycle"][:, 0],
    }


@dataclass
class LabelModel:
    """Calibrated label distributions. Build with `LabelModel.calibrate`; then `oracles` / `draw`."""

    world: World
    rho: dict[str, float]                 # task group -> task_correlation
    base_rates: dict[str, float]
    signal_scale: float
    noise_scale: float
    n_brands: int
    basis_stats: dict[str, tuple[float, float]] = field(default_factory=dict)
    signal_stats: dict[str, tuple[float, float]] = field(default_factory=dict)
    intercepts: dict[str, float] = field(default_factory=dict)
    ortho: dict[str, tuple[float, float]] = field(default_factory=dict)   # task -> (beta on U, residual sd)

    @classmethod
    def calibrate(cls, sample: dict[str, np.ndarray], **kw) -> "LabelModel":
        """Fit standardisation stats and intercepts (to hit the base rates) on a calibration sample."""
        m = cls(**kw)
        raw = scalar_bases(sample, m.world)
        m.basis_stats = {k: (float(v.mean()), float(v.std() + 1e-9)) for k, v in raw.items()}
        z = m._standardise(raw, sample)
        for task, terms in SCALAR_TERMS.items():
            v = m._combine(z, terms)
            m.signal_stats[task] = (float(v.mean()), float(v.std() + 1e-9))
        # Orthogonalise every V_t against its anchor U so that corr(s_anchor, s_t) = rho exactly
        # (the MMoE construction needs orthogonal task functions); fitted on the sample.
        v = m._standard_signals(z)
        for name, _, group, _, _ in TASKS:
            if name in v and name != ANCHORS[group]:
                u = v[ANCHORS[group]]
                beta = float(np.mean(u * v[name]) / np.mean(u * u))
                m.ortho[name] = (beta, float((v[name] - beta * u).std() + 1e-9))
        s = m.signals(z)
        a = 1.6 * m.signal_scale
        m.intercepts["ctr"] = _solve_intercept(a * s["ctr"], base_rates=m.base_rates, task="ctr")
        p_ctr = _sigmoid(m.intercepts["ctr"] + a * s["ctr"])
        # CVR is unconditional P(convert) = P(click) * P(convert | click); solve the second factor.
        m.intercepts["cvr"] = _solve_intercept(a * s["cvr"], m.base_rates, "cvr", weight=p_ctr)
        m.intercepts["churn"] = _solve_intercept(a * s["churn"], m.base_rates, "churn")
        p_churn = _sigmoid(m.intercepts["churn"] + a * s["churn"])
        target = (m.base_rates["retention"] - RETENTION_IF_CHURNED * p_churn.mean()) / (1 - p_churn.mean())
        m.intercepts["retention"] = _solve_intercept(a * s["retention"], {"retention": target}, "retention",
                                                     weight=1 - p_churn, weight_norm=1 - p_churn.mean())
        return m

    def _standardise(self, raw: dict[str, np.ndarray], f: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        z = {k: (v - self.basis_stats[k][0]) / self.basis_stats[k][1] for k, v in raw.items()}
        for k, mode in HMM_BASES.items():        # missing HMM row -> its bases sit at the mean
            z[k] = np.where(f[f"hmm_{mode}_missing"], 0.0, z[k])
        z["_f"] = f                              # vector-valued terms read the raw columns
        return z

    @staticmethod
    def _combine(z: dict, terms: list[tuple[float, str]]) -> np.ndarray:
        out = 0.0
        for w, term in terms:
            a, _, b = term.partition("*")
            out = out + w * (z[a] * z[b] if b else z[a])
        return out

    def _standard_signals(self, z: dict) -> dict[str, np.ndarray]:
        return {t: (self._combine(z, terms) - self.signal_stats[t][0]) / self.signal_stats[t][1]
                for t, terms in SCALAR_TERMS.items()}

    def signals(self, z: dict) -> dict[str, np.ndarray]:
        """Scalar task signals s_t [N] (unit variance) after mixing with the group anchor."""
        v = self._standard_signals(z)
        s = {}
        for name, _, group, _, _ in TASKS:
            if name not in v:
                continue
            u = v[ANCHORS[group]]
            if name == ANCHORS[group]:
                s[name] = u
            else:
                beta, sd = self.ortho[name]
                s[name] = self._mix(group, u, (v[name] - beta * u) / sd)
        return s

    def _mix(self, group: str, shared, own):
        rho = self.rho[group]
        return rho * shared + np.sqrt(1 - rho ** 2) * own

    def _class_mix(self, group: str, u: np.ndarray, own: np.ndarray) -> np.ndarray:
        """Multiclass logits [N, K]: own logits shrunk by sqrt(1-rho^2) plus rho * U * c_k."""
        c = np.linspace(-1.0, 1.0, own.shape[1])
        return self._mix(group, 1.5 * u[:, None] * c[None, :], own)

    def _multiclass_logits(self, z: dict, s: dict) -> dict[str, np.ndarray]:
        """Multiclass logits that do not depend on a parent label. Shapes [N, K]."""
        f, w, k = z["_f"], self.world, self.signal_scale
        life_hmm = np.where(f["hmm_lifecycle_missing"][:, None], 0.0, f["hmm_lifecycle"][:, :5] - 0.2)
        age_c = np.linspace(-1.6, 1.8, 6)
        life = -1.5 * (z["t_age"][:, None] - age_c[None, :]) ** 2 + 2.0 * life_hmm @ w.hmm_life_to_stage \
            + 0.4 * z["t_income"][:, None] * np.linspace(-1, 1, 6)[None, :]
        channel = 1.2 * np.eye(3)[_index(CHANNELS, f["preferred_channel"])] + z["t_logins"][:, None] * np.array([-0.6, 0.2, 0.6]) \
            + w.region_channel[_index(REGIONS, f["region"])] + z["t_age"][:, None] * np.array([0.4, 0.0, -0.4])
        la = f["txn_seq"][:, :28, 1]
        timing = 1.5 * (la - la.mean(1, keepdims=True))
        beh = np.where(f["hmm_behavior_missing"][:, None], 0.0, f["hmm_behavior"][:, :6] - 1 / 6)
        x_nba = np.c_[z["t_income"], z["t_balance"], z["t_products"], z["t_savings"], 3 * beh,
                      f["collaborative"] / 1.5]
        nba = 0.5 * x_nba @ w.nba_weights.T
        cycle = 1.5 * f["tda"][:, :N_CYCLES] + 0.3 * z["t_txn"][:, None] * np.linspace(-1, 1, N_CYCLES)[None, :]
        raw = {"life_stage": life, "channel": channel, "timing": timing, "nba": nba, "consumption_cycle": cycle}
        groups = {name: group for name, _, group, _, _ in TASKS}
        return {t: self._class_mix(groups[t], s[ANCHORS[groups[t]]], k * lg) for t, lg in raw.items()}

    def _category_logits(self, z: dict, s: dict) -> np.ndarray:
        """Spending-category logits without the NBA parent term [N, 12] (hierarchy-driven)."""
        aff = z["_f"]["hierarchy"] @ self.world.category_anchors.T     # norm * cos to each branch
        return self._class_mix("consumption", s["spending_bucket"], 2.5 * self.signal_scale * aff)

    def oracles(self, f: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Exact P(y=1|x) [N], class probabilities [N, K] and E[y|x] [N] for every task but brand."""
        z = self._standardise(scalar_bases(f, self.world), f)
        s = self.signals(z)
        return self._oracles(z, s)[0]

    def _oracles(self, z, s):
        a, b = 1.6 * self.signal_scale, self.intercepts
        o: dict[str, np.ndarray] = {}
        o["ctr"] = _sigmoid(b["ctr"] + a * s["ctr"])
        q_cvr = _sigmoid(b["cvr"] + a * s["cvr"])
        o["cvr"] = o["ctr"] * q_cvr
        o["engagement"] = s["engagement"]
        o["churn"] = _sigmoid(b["churn"] + a * s["churn"])
        r1 = _sigmoid(b["retention"] + a * s["retention"])
        o["retention"] = o["churn"] * RETENTION_IF_CHURNED + (1 - o["churn"]) * r1
        o["ltv"] = 6.0 + 0.8 * s["ltv"] + 1.5 * o["cvr"]
        o["balance_util"] = _sigmoid(1.5 * s["balance_util"])
        o["spending_bucket"] = 2.0 + 0.8 * s["spending_bucket"]
        o["merchant_affinity"] = s["merchant_affinity"]
        mc = self._multiclass_logits(z, s)
        for t, lg in mc.items():
            o[t] = _softmax(lg)
        cat = self._category_logits(z, s)                                    # [N, 12]
        parent = 1.5 * np.eye(N_CATEGORIES)[self.world.nba_to_category]      # [12 nba, 12 cat]
        # P(cat|x) = sum_k P(nba=k|x) softmax(cat_logits + parent[k]); [N, 12, 12] -> [N, 12]
        o["spending_category"] = np.einsum("nk,nkc->nc", o["nba"], _softmax(cat[:, None, :] + parent[None]))
        return o, {"q_cvr": q_cvr, "r1": r1, "cat_logits": cat, "parent": parent}

    def draw(self, f: dict[str, np.ndarray], rng: np.random.Generator) -> tuple[dict, dict]:
        """Draw labels. Returns (labels {task: [N]}, oracles {task: [N] or [N, K]})."""
        z = self._standardise(scalar_bases(f, self.world), f)
        s = self.signals(z)
        o, aux = self._oracles(z, s)
        n, ns = len(s["ctr"]), self.noise_scale
        y: dict[str, np.ndarray] = {}
        y["ctr"] = rng.random(n) < o["ctr"]
        y["cvr"] = y["ctr"] & (rng.random(n) < aux["q_cvr"])                  # funnel: no click, no conversion
        y["engagement"] = o["engagement"] + 0.6 * ns * rng.normal(size=n)
        y["churn"] = rng.random(n) < o["churn"]
        y["retention"] = rng.random(n) < np.where(y["churn"], RETENTION_IF_CHURNED, aux["r1"])
        for t in ("life_stage", "channel", "timing", "nba", "consumption_cycle"):
            y[t] = _draw_categorical(rng, o[t])
        y["spending_category"] = _draw_categorical(rng, _softmax(aux["cat_logits"] + aux["parent"][y["nba"]]))
        y["ltv"] = 6.0 + 0.8 * s["ltv"] + 1.5 * y["cvr"] + 0.5 * ns * rng.normal(size=n)
        y["balance_util"] = o["balance_util"] + 0.08 * ns * rng.normal(size=n)
        y["spending_bucket"] = o["spending_bucket"] + 0.5 * ns * rng.normal(size=n)
        y["merchant_affinity"] = o["merchant_affinity"] + 0.7 * ns * rng.normal(size=n)
        # Brand: taste match in the collaborative space + drill-down from the drawn category.
        w = self.world
        brand_logits = self._mix("consumption", 1.5 * s["spending_bucket"][:, None] * np.linspace(-1, 1, self.n_brands),
                                 1.5 * self.signal_scale * f["collaborative"] @ w.brand_vectors.T) \
            + 2.0 * (w.brand_category[None, :] == y["spending_category"][:, None])
        y["brand_prediction"] = _draw_categorical(rng, _softmax(brand_logits))
        return y, o


def _index(values: np.ndarray, col: np.ndarray) -> np.ndarray:
    """Position of each entry of col [N] in the vocabulary values [V] (all entries must occur)."""
    order = np.argsort(values)
    return order[np.searchsorted(values[order], col)]


def _solve_intercept(logit_part: np.ndarray, base_rates: dict, task: str, weight=None, weight_norm=None) -> float:
    """Intercept b with mean(weight * sigmoid(b + logit_part)) / weight_norm == base_rates[task]."""
    w = np.ones_like(logit_part) if weight is None else weight
    norm = 1.0 if weight_norm is None else weight_norm
    target = base_rates[task]
    f = lambda b: float((w * _sigmoid(b + logit_part)).mean() / norm - target)  # noqa: E731
    if not f(-30.0) < 0 < f(30.0):
        raise ValueError(f"base_rates.{task}={target:.4f} is not reachable with the other base rates "
                         f"(reachable range ({f(-30.0) + target:.4f}, {f(30.0) + target:.4f}))")
    return float(brentq(f, -30.0, 30.0, xtol=1e-10))
