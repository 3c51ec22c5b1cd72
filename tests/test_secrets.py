"""Tune's copy of the driver's credentials into every trial is switched off.

The planted-secrets check of a whole cluster (a submitted train run on two nodes, a sweep, a
submitted job; no key in the bucket or in either node's Ray temp dir) shares its two Ray nodes
with the multinode run: test_multinode.py.
"""

from __future__ import annotations

import uuid

DRIVER = {"AWS_ACCESS_KEY_ID": f"DRVKEY{uuid.uuid4().hex[:14].upper()}",
          "AWS_SECRET_ACCESS_KEY": f"driver-secret-{uuid.uuid4().hex}"}


def test_trials_get_no_credentials_from_the_driver(monkeypatch):
    """Tune copies the driver's AWS_* variables into every trial's runtime env unless told not to."""
    import ray.tune.execution.class_cache as class_cache

    from asaptrain.data.s3 import keep_credentials_out_of_tune

    for name, value in DRIVER.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(class_cache, "ENV_VARS_TO_PROPAGATE", class_cache.ENV_VARS_TO_PROPAGATE)
    keep_credentials_out_of_tune()

    class Trainable:
        pass

    remote = class_cache._ActorClassCache().get(Trainable)
    env = remote._default_options["runtime_env"]["env_vars"]
    assert env and not set(env) & set(DRIVER), env  # Tune's own settings still pass
