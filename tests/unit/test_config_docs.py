"""Every config field a user can set has a docstring (it is the reference: `model_fields[...].description`)."""
from __future__ import annotations

import typing

from pydantic import BaseModel

from ple_adatt.config.dataset import DatasetSpec
from ple_adatt.config.schema import MODEL_ARCHS, ExperimentConfig
from ple_adatt.config.sweeps import CampaignConfig, StudyConfig


def _models(annotation) -> list[type[BaseModel]]:
    """Pydantic models reachable from a field annotation (unions, Annotated, containers)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models(arg)]


def _walk(roots) -> list[type[BaseModel]]:
    seen: list[type[BaseModel]] = []
    todo = list(roots)
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.append(m)
        for f in m.model_fields.values():
            todo += _models(f.annotation)
    return seen


def test_every_config_field_has_a_docstring():
    models = _walk([ExperimentConfig, CampaignConfig, StudyConfig, DatasetSpec, *MODEL_ARCHS.values()])
    assert len(models) > 30 and all(m in models for m in MODEL_ARCHS.values())
    missing = [f"{m.__name__}.{name}" for m in models for name, f in m.model_fields.items()
               if not (f.description or "").strip()]
    assert not missing, f"config fields without a docstring: {missing}"
