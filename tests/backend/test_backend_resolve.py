"""resolve: the one place ``match`` and ``mppca`` turn a backend name into the implementation that runs."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import mrfengine.backend as backend
from mrfengine.backend import BackendInfo, resolve
from mrfengine.denoise import mppca
from mrfengine.dictionary import Dictionary
from mrfengine.errors import BackendUnavailableError, ValidationError
from mrfengine.matching import match

FAMILY = {"kernel": "demo", "implemented": ("cpp", "numba", "numpy", "reference"), "auto": ("cpp", "numba", "numpy")}


@pytest.fixture
def cpp_missing(monkeypatch):
    """A machine where the C++ extension was not built and numba is installed."""
    real = backend.probe

    def probe(name: str) -> BackendInfo:
        if name == "cpp":
            return BackendInfo("cpp", False, "extension mrfengine._ext not built")
        if name == "numba":
            return BackendInfo("numba", True, "numba (pretend)")
        return real(name)

    monkeypatch.setattr(backend, "probe", probe)


def test_explicit_available_names_come_back_as_given(cpp_missing):
    assert resolve("numba", **FAMILY) == "numba"
    assert resolve("numpy", **FAMILY) == "numpy"
    # A family's own pure-Python implementation is not a probed backend and always runs.
    assert resolve("reference", **FAMILY) == "reference"


def test_unknown_and_unavailable_names_have_one_wording_each(cpp_missing):
    with pytest.raises(ValidationError, match=r"^demo: backend must be 'auto' or one of cpp, numba, numpy, "
                                              r"reference; got 'fortran'$"):
        resolve("fortran", **FAMILY)
    # Known to probe but not implemented by this family: unknown to it.
    with pytest.raises(ValidationError, match="demo: backend must be"):
        resolve("cupy", **FAMILY)
    with pytest.raises(BackendUnavailableError,
                       match=r"^demo: backend 'cpp' is not available here: extension mrfengine._ext not built$"):
        resolve("cpp", **FAMILY)


def test_auto_takes_the_first_usable_in_order_and_logs_it(cpp_missing, caplog):
    with caplog.at_level(logging.INFO, logger="mrfengine.backend"):
        assert resolve("auto", **FAMILY) == "numba"
    assert "demo: backend 'auto' chose 'numba'" in caplog.text


def test_refused_backends_are_passed_over_by_auto_and_named_when_asked_for(cpp_missing):
    refused = {"numba": "it matches real data only", "cpp": "it matches real data only"}
    assert resolve("auto", **FAMILY, refused=refused) == "numpy"
    with pytest.raises(BackendUnavailableError, match=r"^demo: backend 'numba' cannot run this call: it matches real"):
        resolve("numba", **FAMILY, refused=refused)


def test_auto_skips_simulated_backends(monkeypatch):
    monkeypatch.setattr(backend, "probe", lambda name: BackendInfo(name, True, "pretend"))
    monkeypatch.setattr(backend, "is_simulated", lambda name: name == "cpp")
    assert resolve("auto", **FAMILY) == "numba"


def test_auto_with_nothing_usable_says_what_it_tried(cpp_missing):
    with pytest.raises(BackendUnavailableError, match=r"demo: no backend can run this call \(tried cpp\)"):
        resolve("auto", kernel="demo", implemented=("cpp",), auto=("cpp",))


def test_match_and_mppca_resolve_through_it():
    rng = np.random.default_rng(0)
    d = Dictionary(np.abs(rng.normal(size=(20, 8))).astype(np.float32) + 0.05, {"T1": np.arange(20.0)})
    x = np.abs(rng.normal(size=(3, 8))).astype(np.float32)
    with pytest.raises(ValidationError, match="^match: backend must be 'auto' or one of numpy, cpp, numba, cupy, "
                                              "numba-cuda; got 'fortran'$"):
        match(x, d, backend="fortran")
    # complex data run on every backend now (issue 22): auto picks the fastest available, as for real data
    xc = x.astype(np.complex64)
    ref = match(xc, d, backend="numpy")
    fast = match(xc, d)
    assert fast.backend != "numpy" or not any(backend.probe(b).available for b in ("cpp", "numba"))
    np.testing.assert_array_equal(fast.index, ref.index)
    with pytest.raises(ValidationError, match="^mppca: backend must be 'auto' or one of cpp, numba, numpy, cupy, "
                                              "reference; got 'fortran'$"):
        mppca(np.zeros((4, 4, 4, 3), np.float32), backend="fortran")
