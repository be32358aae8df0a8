"""A campaign's search space: checks against the experiment schema, and its Optuna form.

    problems = check_search_space(campaign_config, base_dict)   # before Ray starts
    OptunaSearch(space=DefineByRun(dict(cc.search_space)), points_to_evaluate=[base_point(space, cfg)])

Parameters are dotted config paths (`train.lr`, `model.logit_transfer.edges.0.strength`); a
parameter with `when:` is sampled only when an earlier categorical took one of the given values.
Categorical choices that are not Optuna scalars travel json-encoded (launch/trial.encode_choice).
"""
from __future__ import annotations

from typing import Any

from ple_adatt.config.loading import ConfigError, validate
from ple_adatt.config.paths import apply_values, get_path
from ple_adatt.config.schema import ExperimentConfig
from ple_adatt.config.sweeps import CampaignConfig, CategoricalParam, FloatParam, IntParam
from ple_adatt.launch.trial import decode_choice, encode_choice


def candidate_values(p) -> list[Any]:
    """The values checked before Ray starts: every categorical choice, or both bounds."""
    if isinstance(p, CategoricalParam):
        return list(p.choices)
    return [p.low, p.high]


def _condition_values(cc: CampaignConfig, path: str) -> dict[str, Any]:
    """One assignment of the parameters `path` depends on (transitively) that activates it."""
    out: dict[str, Any] = {}
    for dep, allowed in (cc.search_space[path].when or {}).items():
        out.update(_condition_values(cc, dep))
        out[dep] = allowed[0] if isinstance(allowed, list) else allowed
    return out


def check_search_space(cc: CampaignConfig, base: dict) -> list[str]:
    """Every path exists, every categorical value and both bounds give a valid experiment, and every
    `when:` value is one of the parent's choices."""
    problems: list[str] = []
    for path, p in cc.search_space.items():
        for dep, allowed in (p.when or {}).items():
            parent = cc.search_space.get(dep)
            if isinstance(parent, CategoricalParam):
                for a in (allowed if isinstance(allowed, list) else [allowed]):
                    if a not in parent.choices:
                        problems.append(f"search_space.{path}.when.{dep}: {a!r} is not one of its choices "
                                        f"{parent.choices}")
        cond = _condition_values(cc, path)
        for value in candidate_values(p):
            data = base
            try:
                data = apply_values(data, {**cond, path: value})
            except KeyError as e:
                problems.append(f"search_space.{path}: {e.args[0]}")
                break
            try:
                validate(data, ExperimentConfig)
            except ConfigError as e:
                unknown = [q for q in e.problems if "unknown key" in q]
                if unknown:
                    problems.append(f"search_space.{path}: no such config key ({'; '.join(unknown)})")
                    break
                when = f" (with {cond})" if cond else ""
                problems.append(f"search_space.{path}: value {value!r}{when} gives an invalid experiment: "
                                + "; ".join(e.problems))
    return problems


class DefineByRun:
    """Optuna define-by-run space over dotted paths (a class, so OptunaSearch can pickle it)."""

    def __init__(self, space: dict):
        self.space = space

    def __call__(self, trial) -> None:
        chosen: dict[str, Any] = {}
        for path, p in self.space.items():
            if not active(p, chosen):
                continue
            if isinstance(p, FloatParam):
                chosen[path] = trial.suggest_float(path, p.low, p.high, log=p.log, step=p.step)
            elif isinstance(p, IntParam):
                chosen[path] = trial.suggest_int(path, p.low, p.high, log=p.log, step=p.step)
            else:
                chosen[path] = decode_choice(trial.suggest_categorical(path, [encode_choice(c) for c in p.choices]))
        return None


def active(p, chosen: dict[str, Any]) -> bool:
    """Whether parameter `p` is sampled, given the values chosen so far (its `when:` holds)."""
    for dep, allowed in (p.when or {}).items():
        if dep not in chosen:
            return False
        allowed = allowed if isinstance(allowed, list) else [allowed]
        if chosen[dep] not in allowed:
            return False
    return True


def optuna_distributions(space: dict, params: dict) -> dict:
    """Optuna distributions of the parameters in `params` (to add finished trials to a study)."""
    import optuna.distributions as od

    out = {}
    for path in params:
        p = space[path]
        if isinstance(p, FloatParam):
            out[path] = od.FloatDistribution(p.low, p.high, log=p.log, step=p.step)
        elif isinstance(p, IntParam):
            out[path] = od.IntDistribution(p.low, p.high, log=p.log, step=p.step)
        else:
            out[path] = od.CategoricalDistribution([encode_choice(c) for c in p.choices])
    return out


def base_point(space: dict, base_cfg: ExperimentConfig) -> dict[str, Any]:
    """The base experiment's own values of the searched parameters (those inside the space)."""
    dump = base_cfg.model_dump(mode="json")
    point: dict[str, Any] = {}
    chosen: dict[str, Any] = {}
    for path, p in space.items():
        if not active(p, chosen):
            continue
        v = get_path(dump, path, None)
        if v is None and path.startswith("tasks."):  # per-task defaults are not in the dump
            task = path.split(".")[1]
            if task in base_cfg.task_names():
                v = getattr(base_cfg.task_settings(task), path.split(".", 2)[2], None)
        if isinstance(p, CategoricalParam):
            if path.endswith(".loss") and path.startswith("tasks.") and v is None:
                v = base_cfg.task_loss(path.split(".")[1])
            if v not in p.choices:
                continue
            point[path] = encode_choice(v)
        else:
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not p.low <= v <= p.high:
                continue
            point[path] = v
        chosen[path] = v
    return point
