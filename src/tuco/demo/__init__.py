"""The embedded demo: a real pre-trained / fine-tuned pair built offline, and what TuCo shows on it.

``build`` makes the pair (``tuco demo build``); ``run`` scores prompt sets on it (``make demo``).
"""
