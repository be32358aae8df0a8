"""Synthetic customers, part 1: latent personas -> observed feature groups.

Layering follows the seed generator (spec §10): a persona z and five latent traits
l = (wealth, activity, risk, digital, loyalty), four situation axes, then observables.
Each feature group also receives *private* factors that no other group sees (sequence
trend / weekly rhythm / payday, favourite merchant branch, spending cycle, collaborative
taste, HMM state noise), so every group carries label signal the others cannot supply.

Everything here is a pure function of (world, rng, n): no global state. N = rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PERSONAS = ("conservative_saver", "active_spender", "young_digital", "high_value",
            "occasional_user", "diversified")
# Persona means of the latent traits (wealth, activity, risk, digital, loyalty); spec §10 examples.
PERSONA_MEANS = np.array([
    [0.3, -0.4, -0.6, -0.3, 0.6],
    [0.0, 0.8, 0.3, 0.2, -0.1],
    [-0.4, 0.4, 0.4, 0.9, -0.5],
    [0.9, 0.3, 0.4, 0.2, 0.6],
    [-0.5, -0.8, -0.2, -0.5, -0.4],
    [0.3, 0.3, 0.1, 0.3, 0.2],
])
PERSONA_AGE = np.array([52.0, 36.0, 27.0, 48.0, 42.0, 40.0])
SITUATIONS = {  # axis -> states; probabilities in SITUATION_PROBS
    "engagement": ("steady", "surging", "declining", "volatile"),
    "lifecycle": ("stable", "growing", "consolidating", "transitioning"),
    "value": ("stable", "ascending", "descending", "shock"),
    "consumption": ("consistent", "exploring", "focusing", "switching"),
}
SITUATION_PROBS = np.array([0.5, 0.2, 0.18, 0.12])

TABULAR = ("age", "income", "tenure_months", "num_products", "balance", "credit_limit",
           "spend_30d", "txn_count_30d", "digital_logins_30d", "savings_rate")
PROFILE = ("segment", "region", "preferred_channel", "card_tier", "gender")
SEGMENTS = np.array(["mass", "emerging", "affluent", "private"])
REGIONS = np.array(["north", "south", "east", "west", "central", "coast", "capital", "rural"])
CHANNELS = np.array(["branch", "web", "app"])
GENDERS = np.array(["F", "M"])
SEQ_FEATURES = ("txn_count", "log_amount", "online_share", "distinct_merchants")
N_CATEGORIES = 12          # spending categories == top level of the merchant hierarchy
HIER_DIM = 8               # Poincare-ball dimension
TDA_DIM = 16               # 7 landscape bins + 4 Betti-0 + 3 Betti-1 + 2 total persistence
N_CYCLES = 7               # consumption-cycle classes, encoded in the landscape bins
COLLAB_DIM = 16
HMM_MODES = {"journey": 5, "lifecycle": 5, "behavior": 6}   # states per mode
HMM_DIM = 16


@dataclass(frozen=True)
class World:
    """Population-level constants drawn once from the seed (anchors, brand vectors, maps)."""

    category_anchors: np.ndarray   # [12, HIER_DIM] unit vectors (top-level merchant branches)
    collab_mix: np.ndarray         # [5, COLLAB_DIM] latent traits -> collaborative embedding
    brand_vectors: np.ndarray      # [n_brands, COLLAB_DIM] unit vectors
    brand_category: np.ndarray     # [n_brands] int, spending category of each brand
    collab_dirs: np.ndarray        # [2, COLLAB_DIM] unit directions used by scalar tasks
    nba_weights: np.ndarray        # [12, n_nba_inputs] NBA logit weights
    region_channel: np.ndarray     # [8, 3] region effect on the channel task
    nba_to_category: np.ndarray    # [12] the category each NBA action drills down to
    hmm_life_to_stage: np.ndarray  # [5, 6] lifecycle HMM state -> life-stage logits


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_world(seed: int, n_brands: int) -> World:
    """Draw the population constants; a pure function of (seed, n_brands)."""
    rng = np.random.default_rng([seed, 7])
    return World(
        category_anchors=_unit(rng.normal(size=(N_CATEGORIES, HIER_DIM))),
        collab_mix=rng.normal(scale=0.5, size=(5, COLLAB_DIM)),
        brand_vectors=_unit(rng.normal(size=(n_brands, COLLAB_DIM))),
        brand_category=np.arange(n_brands) % N_CATEGORIES,
        collab_dirs=_unit(rng.normal(size=(2, COLLAB_DIM))),
        nba_weights=rng.normal(size=(12, 4 + HMM_MODES["behavior"] + COLLAB_DIM)),
        region_channel=rng.normal(scale=0.7, size=(len(REGIONS), 3)),
        nba_to_category=rng.permutation(N_CATEGORIES),
        hmm_life_to_stage=rng.normal(scale=1.0, size=(5, 6)),
    )


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def sample_population(world: World, rng: np.random.Generator, n: int, persona_weights: np.ndarray,
                      seq_days: int, hmm_missing_rate: float) -> dict[str, np.ndarray]:
    """Draw n customers. Returns observed columns plus `latent_*` ground truth.

    Shapes: scalars [N]; txn_seq [N, T, 4]; hierarchy [N, 8]; tda [N, 16];
    collaborative [N, 16]; hmm_<mode> [N, 16] with hmm_<mode>_missing [N] bool.
    """
    out: dict[str, np.ndarray] = {}
    z = rng.choice(len(PERSONAS), size=n, p=persona_weights)
    lat = PERSONA_MEANS[z] + 0.3 * rng.normal(size=(n, 5))
    lat = 0.7 * lat + 0.3 * rng.normal(size=(n, 5))          # decouple traits from persona
    sit = {axis: rng.choice(4, size=n, p=SITUATION_PROBS) for axis in SITUATIONS}
    lat[:, 1] += np.select([sit["engagement"] == 1, sit["engagement"] == 2], [0.5, -0.5], 0.0)
    lat[:, 0] += np.where(sit["value"] == 3, rng.choice([-0.8, 0.8], size=n), 0.0)
    wealth, activity, risk, digital, loyalty = lat.T

    # --- sequence [N, T, 4]: rhythm factors are private to this group ---
    t = np.arange(seq_days)
    trend = rng.normal(0.0, 0.5, n) + np.select(
        [sit["engagement"] == 1, sit["engagement"] == 2], [1.0, -1.0], 0.0)
    week_amp = rng.uniform(0.0, 0.9, n)
    week_phase = rng.uniform(0.0, 7.0, n)
    payday = rng.integers(0, 28, n)
    log_rate = (0.2 + 0.6 * activity)[:, None] \
        + trend[:, None] * (t / max(seq_days - 1, 1) - 0.5)[None, :] \
        + week_amp[:, None] * np.cos(2 * np.pi * (t[None, :] - week_phase[:, None]) / 7)
    spike = (t[None, :] % 28) == payday[:, None]
    log_rate = log_rate + 1.2 * spike
    volatile = sit["engagement"] == 3
    log_rate = log_rate + np.where(volatile[:, None], rng.normal(0, 0.6, (n, seq_days)), 0.0)
    count = rng.poisson(np.exp(log_rate))
    ticket = np.exp(3.0 + 0.5 * wealth[:, None] + 0.4 * rng.normal(size=(n, seq_days)))
    amount = count * ticket
    online = rng.binomial(count, _sigmoid(1.2 * digital)[:, None]) / np.maximum(count, 1)
    explore = _sigmoid(-0.5 + np.select([sit["consumption"] == 1, sit["consumption"] == 2], [1.2, -1.2], 0.0))
    distinct = np.minimum(count, 1 + rng.binomial(np.maximum(count - 1, 0), explore[:, None])) * (count > 0)
    out["txn_seq"] = np.stack([count, np.log1p(amount), online, distinct], axis=-1).astype(np.float32)

    # --- tabular scalars (aggregates hide the sequence's rhythm) ---
    out["age"] = np.clip(PERSONA_AGE[z] + 4 * wealth + rng.normal(0, 8, n), 18, 90)
    out["income"] = np.exp(10.3 + 0.5 * wealth + 0.25 * rng.normal(size=n))
    out["tenure_months"] = np.clip(rng.gamma(2.0 + 1.5 * np.clip(loyalty + 1.0, 0, 3), 12.0), 0, 360)
    out["num_products"] = np.minimum(rng.poisson(np.exp(0.8 + 0.3 * wealth + 0.2 * loyalty)), 12).astype(float)
    out["balance"] = np.exp(8.0 + 0.8 * wealth + 0.4 * rng.normal(size=n))
    out["credit_limit"] = np.exp(8.5 + 0.5 * wealth + 0.3 * risk + 0.3 * rng.normal(size=n))
    out["spend_30d"] = amount.sum(1)
    out["txn_count_30d"] = count.sum(1).astype(float)
    out["digital_logins_30d"] = rng.poisson(np.exp(1.5 + 1.0 * digital)).astype(float)
    out["savings_rate"] = _sigmoid(-risk + 0.5 * wealth + rng.normal(0, 0.5, n))
    for c in TABULAR:   # float32 as written, so labels are exact functions of the stored values
        out[c] = out[c].astype(np.float32)

    # --- profile categoricals (region is private: only the profile group knows it) ---
    seg_logits = np.stack([-wealth, 0.5 - np.abs(wealth), wealth, 2 * wealth - 1.5], 1)
    out["segment"] = SEGMENTS[_draw_categorical(rng, _softmax(2 * seg_logits))]
    out["region"] = REGIONS[rng.integers(0, len(REGIONS), n)]
    ch_logits = np.stack([0.04 * (out["age"] - 45), 0.3 * digital, 1.2 * digital - 0.03 * (out["age"] - 40)], 1)
    out["preferred_channel"] = CHANNELS[_draw_categorical(rng, _softmax(ch_logits))]
    out["card_tier"] = np.clip(np.round(1.2 + wealth + 0.5 * rng.normal(size=n)), 0, 3).astype(np.int64)
    out["gender"] = GENDERS[rng.integers(0, 2, n)]

    # --- hierarchy: favourite merchant branch in a Poincare ball (norm = specialisation) ---
    fav = rng.integers(0, N_CATEGORIES, n)
    direction = _unit(world.category_anchors[fav] + 0.45 * rng.normal(size=(n, HIER_DIM)))
    radius = np.tanh(0.5 * rng.gamma(2.0, 0.8, n) + 0.3 * np.clip(loyalty, 0, None))
    out["hierarchy"] = (np.minimum(radius, 0.98)[:, None] * direction).astype(np.float32)

    # --- TDA summary: spending cycle (private) as a bump in a 7-bin persistence landscape ---
    cycle = rng.integers(0, N_CYCLES, n)
    height = rng.uniform(0.6, 1.6, n)
    landscape = height[:, None] * np.exp(-0.5 * (np.arange(N_CYCLES)[None, :] - cycle[:, None]) ** 2) \
        + 0.3 * rng.normal(size=(n, N_CYCLES))
    volatility = rng.uniform(0.2, 1.5, n) + 0.3 * np.abs(risk)
    betti0 = np.exp(-np.arange(1, 5)[None, :] / volatility[:, None]) * 10 + 0.2 * rng.normal(size=(n, 4))
    loops = rng.poisson(1.0 + 2.0 * np.abs(risk))
    betti1 = loops[:, None] * np.exp(-np.arange(3)[None, :] / 2.0) + 0.2 * rng.normal(size=(n, 3))
    out["tda"] = np.concatenate(
        [landscape, betti0, betti1, betti0.sum(1, keepdims=True), betti1.sum(1, keepdims=True)], 1
    ).astype(np.float32)

    # --- collaborative embedding: private taste + a projection of the latent traits ---
    out["collaborative"] = (0.8 * rng.normal(size=(n, COLLAB_DIM)) + lat @ world.collab_mix).astype(np.float32)

    # --- HMM triple mode: state posteriors + 5 meta + ODE-like dynamics, some rows missing ---
    state_logits = {
        "journey": np.stack([-activity, np.zeros(n), 0.5 * digital, activity, activity + loyalty - 0.5], 1)
        + 1.5 * np.eye(5)[np.array([0, 3, 1, 2])[sit["engagement"]]],
        "lifecycle": np.stack([-0.02 * out["tenure_months"] + 1, 0.5 * loyalty, loyalty, np.zeros(n), -loyalty - 1], 1)
        + 1.5 * np.eye(5)[np.array([2, 1, 3, 4])[sit["lifecycle"]]],
        "behavior": np.c_[lat, np.zeros(n)] + 1.5 * np.eye(6)[np.array([0, 1, 4, 5])[sit["consumption"]]],
    }
    for mode, k in HMM_MODES.items():
        state = _draw_categorical(rng, _softmax(state_logits[mode]))
        post = _softmax(2.5 * np.eye(k)[state] + rng.normal(size=(n, k)))
        entropy = -(post * np.log(post + 1e-9)).sum(1) / np.log(k)
        meta = np.stack([rng.gamma(2.0, 2.0, n), 1 - entropy + 0.1 * rng.normal(size=n), entropy,
                         state / (k - 1), rng.beta(2, 5, n)], 1)
        ode = 0.5 * rng.normal(size=(n, HMM_DIM - k - 5)) + 0.3 * state[:, None] / k
        out[f"hmm_{mode}"] = np.concatenate([post, meta, ode], 1).astype(np.float32)
        out[f"hmm_{mode}_missing"] = rng.random(n) < hmm_missing_rate

    out["latent_persona"] = z.astype(np.int64)
    for i, name in enumerate(("wealth", "activity", "risk", "digital", "loyalty")):
        out[f"latent_{name}"] = lat[:, i].astype(np.float32)
    for axis in SITUATIONS:
        out[f"latent_situation_{axis}"] = sit[axis].astype(np.int64)
    return out


def _draw_categorical(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One draw per row from probs [N, K] -> [N] int (inverse-CDF, vectorised)."""
    u = rng.random((probs.shape[0], 1))
    return np.minimum((probs.cumsum(1) < u).sum(1), probs.shape[1] - 1)
