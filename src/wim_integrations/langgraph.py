"""`wim_node`, WiM as a LangGraph node (kept at this path; it lives in `langchain/graph.py`)."""

from .langchain.graph import wim_node

__all__ = ["wim_node"]
