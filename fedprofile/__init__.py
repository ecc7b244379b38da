"""fedprofile: privacy-preserving federated profiling and recommendation for precision marketing.

Business lines keep their customers in their own silos; fedprofile trains and
evaluates shared models across them with Flower, without raw rows leaving a silo.
"""

__version__ = "0.1.0"
