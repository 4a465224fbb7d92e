"""Training and evaluation: the loop (``loop.py``) and the one orchestrator (``fit.py``)."""
