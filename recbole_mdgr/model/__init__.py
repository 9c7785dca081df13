"""Generative SID models; each lives in the module named after it (``tiger.py`` -> ``TIGER``)."""
