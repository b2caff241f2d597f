"""Shared test configuration.

Hypothesis runs derandomised in CI (``HYPOTHESIS_PROFILE=ci``, the default) so a green run is
reproducible; ``HYPOTHESIS_PROFILE=dev`` explores further and with fresh randomness.
"""

import os
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, settings

from drpo_sim.lm.pretrain import PretrainConfig, pretrain

settings.register_profile(
    "ci", max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

_OWN_CACHE = "_DRPO_SIM_TEST_CACHE_OWNER"


def pytest_configure(config):
    """One arena base-model cache (:func:`drpo_sim.arena.pretrain.cache_dir`) for the whole session,
    in a fresh temporary folder: the tests never read or write the user's cache, and the xdist
    workers (started after this, with this environment) train each base once between them."""
    if "DRPO_SIM_CACHE" not in os.environ:
        os.environ["DRPO_SIM_CACHE"] = tempfile.mkdtemp(prefix="drpo_sim_test_cache_")
        os.environ[_OWN_CACHE] = str(os.getpid())


def pytest_unconfigure(config):
    if os.environ.get(_OWN_CACHE) == str(os.getpid()):
        shutil.rmtree(os.environ.pop("DRPO_SIM_CACHE"), ignore_errors=True)
        del os.environ[_OWN_CACHE]


def pytest_collection_modifyitems(config, items):
    """Run the tests marked ``slow`` first, the longest first (``@pytest.mark.slow(seconds=...)``,
    an estimate on two cores): with ``pytest -n 2 --maxschedchunk 2`` (``make test``) the longest
    test (the end-to-end ``reproduce --quick``) then starts at once on one worker while the other
    works through the rest, instead of starting last and setting the suite's wall time on its own;
    the small chunks keep other tests from queueing behind it (xdist's default hands each worker a
    quarter of its share up front, which then waits for the long test)."""

    def estimate(item) -> float:
        marker = item.get_closest_marker("slow")
        return 0.0 if marker is None else float(marker.kwargs.get("seconds", 1.0))

    items.sort(key=estimate, reverse=True)


@pytest.fixture(scope="session")
def lm_checkpoint(tmp_path_factory):
    """The tiny transformer lab's default pretrained checkpoint (a few seconds to train), shared by
    the tests of drpo_sim.lm, drpo_sim.run.lab and ``drpo-sim lm``; its file is alone in its cache
    directory (``lm_checkpoint.path.parent``)."""
    return pretrain(PretrainConfig(), tmp_path_factory.mktemp("lm_cache"))
