"""Shared experts. Every constructor takes the routed group shapes as plain arguments:

    Expert(inputs: {group: shape}, cat_cardinalities: {group: [table sizes]} | None, out_dim, dropout, **extras)

and `forward(batch) -> [B, out_dim]`, reading only `feat/<group>` / `cat/<group>` of its routed groups and
returning zeros [B, out_dim] when none of them is in the batch. `out_dim` is an attribute.
"""
from .causal import CausalExpert
from .deepfm import DeepFMExpert
from .hgcn import HGCNExpert
from .lightgcn import LightGCNExpert
from .mlp import MLPExpert
from .optimal_transport import OptimalTransportExpert
from .perslay import PersLayExpert
from .temporal import TemporalExpert

# Name -> constructor. Names are the ones the dataset spec's `experts:` lists use.
EXPERTS = {
    "mlp": MLPExpert,
    "deepfm": DeepFMExpert,
    "temporal": TemporalExpert,
    "hgcn": HGCNExpert,
    "perslay": PersLayExpert,
    "lightgcn": LightGCNExpert,
    "causal": CausalExpert,
    "optimal_transport": OptimalTransportExpert,
}

__all__ = ["EXPERTS", "CausalExpert", "DeepFMExpert", "HGCNExpert", "LightGCNExpert", "MLPExpert",
           "OptimalTransportExpert", "PersLayExpert", "TemporalExpert"]
