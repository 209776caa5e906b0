"""Small end-to-end experiments from the lecture, each a function returning numbers and a figure."""

from .product_of_experts import PoEResult, product_of_experts

__all__ = ["PoEResult", "product_of_experts"]
