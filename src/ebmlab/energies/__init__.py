"""What a density is: energies, analytic targets, composition."""

from . import targets
from .compose import Mixture, Product, Tempered, mixture, product, tempered
from .core import Energy, energy_and_score, evaluate_energy, log_ratio, score
from .nets import ConvEnergy, MLPEnergy, conv_trunk, mlp
from .score_nets import EnergyScore, ScoreConvNet, ScoreMLP

__all__ = [
    "ConvEnergy",
    "EnergyScore",
    "ScoreConvNet",
    "ScoreMLP",
    "Energy",
    "MLPEnergy",
    "conv_trunk",
    "mlp",
    "Mixture",
    "Product",
    "Tempered",
    "energy_and_score",
    "evaluate_energy",
    "log_ratio",
    "mixture",
    "product",
    "score",
    "targets",
    "tempered",
]
