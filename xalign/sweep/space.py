"""Search spaces and objectives: Optuna-style distributions from a sweep file as Ray Tune
domains (which OptunaSearch hands to Optuna), and the Pareto front of a multi-objective
sweep."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ray import tune

from xalign.config.sweep import Distribution


def tune_space(search: Mapping[str, Distribution]) -> dict[str, Any]:
    """{dotted key: Tune domain}. Int bounds are inclusive, as in Optuna."""
    space = {}
    for key, dist in search.items():
        if dist.categorical is not None:
            space[key] = tune.choice(list(dist.categorical.choices))
        elif dist.float is not None:
            f = dist.float
            space[key] = (tune.quniform(f.low, f.high, f.step) if f.step else
                          tune.loguniform(f.low, f.high) if f.log else tune.uniform(f.low, f.high))
        else:
            i = dist.int
            space[key] = (tune.qrandint(i.low, i.high, i.step) if i.step else
                          tune.lograndint(i.low, i.high + 1) if i.log else tune.randint(i.low, i.high + 1))
    return space


def dominates(a: Mapping[str, float], b: Mapping[str, float], objectives: Mapping[str, str]) -> bool:
    """a is no worse than b on every objective and better on one."""
    sign = {m: 1 if mode == "max" else -1 for m, mode in objectives.items()}
    no_worse = all(sign[m] * a[m] >= sign[m] * b[m] for m in objectives)
    better = any(sign[m] * a[m] > sign[m] * b[m] for m in objectives)
    return no_worse and better


def pareto_front(trials: Sequence, objectives: Mapping[str, str]) -> list:
    """Trials (with ``.metrics``) that no other trial dominates."""
    return [t for t in trials if not any(dominates(o.metrics, t.metrics, objectives) for o in trials if o is not t)]
