"""The Ray Tune sweep of the hybrid (``tune``) and its search space (``space``)."""
