"""Shared test configuration.

Hypothesis runs derandomised in CI (``HYPOTHESIS_PROFILE=ci``, the default) so a green run is
reproducible; ``HYPOTHESIS_PROFILE=dev`` explores further and with fresh randomness.
"""

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(config, items):
    """Run the tests marked ``slow`` first: with ``pytest -n 2`` the longest test (the end-to-end
    ``reproduce --quick``) then starts at once on one worker while the other works through the
    rest, instead of starting last and setting the suite's wall time on its own."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def lm_checkpoint(tmp_path_factory):
    """The tiny transformer lab's default pretrained checkpoint (a few seconds to train), shared by
    the tests of drpo_sim.lm, drpo_sim.run.lab and ``drpo-sim lm``; its file is alone in its cache
    directory (``lm_checkpoint.path.parent``)."""
    from drpo_sim.lm.pretrain import PretrainConfig, pretrain

    return pretrain(PretrainConfig(), tmp_path_factory.mktemp("lm_cache"))
