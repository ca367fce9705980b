"""The cost of the U-net's two optional outputs (issue 18): Monte-Carlo dropout
uncertainty and the physics-consistency map, against default inference.

``MRFENGINE_BENCH_SIZE=full``: a whole brain, 60 slices of 240 x 240 with 35
frames, through the paper's MSE-5 network (random weights: the time does not
depend on them), ``torch.set_num_threads(2)``, float32, batch 4; the
consistency map scores 750,000 brain voxels (an ellipsoid mask), each slice
against its own slot of the paper's sequence.  The default ``small`` size runs
2 slices of 32 x 32 so CI's ``--benchmark-disable`` smoke run stays quick.

Cases: default inference; ``mc_samples=8`` (the deterministic pass plus 8
stochastic ones); the consistency map alone (the network's maps given).
``extra_info`` holds seconds per brain and the ratio to default inference
measured in the same run.  One round each at full size (a round of MC dropout
is over a minute).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mrfengine.nn import LoadedModel, Normalisation, get_config, run_network, save_model  # noqa: E402
from mrfengine.nn.consistency import physics_consistency  # noqa: E402
from mrfengine.sequence import hermann2021  # noqa: E402

THREADS = 2
_TIMES: dict[str, float] = {}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, full):
    old = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    config = get_config("MSE-5")
    net = config.build(seed=0).eval()
    path = tmp_path_factory.mktemp("nn") / "mse5.pt"
    seq = hermann2021(1)
    save_model(net, path, config=config, normalisation=Normalisation.identity(35), sequence=seq)
    from mrfengine.nn import load_model

    card = load_model(path).card
    model = LoadedModel(module=net, card=card, path=path)
    shape = (60, 35, 240, 240) if full else (2, 35, 32, 32)
    rng = np.random.default_rng(0)
    volume = rng.uniform(0.05, 0.5, size=shape).astype(np.float32)
    z, y, x = np.ogrid[:shape[0], :shape[2], :shape[3]]
    # ellipsoid: 750,000 voxels in the full brain (the whole-brain matching benchmark's count)
    r = ((z - shape[0] / 2 + 0.5) / (shape[0] / 2)) ** 2 + ((y - shape[2] / 2) / (0.41 * shape[2])) ** 2 \
        + ((x - shape[3] / 2) / (0.48 * shape[3])) ** 2
    mask = r <= 1.0
    t1 = rng.uniform(500, 3000, size=mask.shape).astype(np.float32)
    t2 = rng.uniform(20, 200, size=mask.shape).astype(np.float32)
    run_network(volume[:4], model, input_scale="absolute", mask=mask[:4])  # warm-up: oneDNN primitives
    yield {"model": model, "volume": volume, "mask": mask, "t1": t1, "t2": t2, "sequence": seq}
    torch.set_num_threads(old)


def _record(benchmark, name: str, n_slices: int) -> None:
    if benchmark.stats is None:
        return
    t = benchmark.stats.stats.min
    _TIMES[name] = t
    benchmark.extra_info["seconds_per_brain_of_60"] = round(t / n_slices * 60, 2)
    if "default" in _TIMES and name != "default":
        benchmark.extra_info["ratio_to_default_inference"] = round(t / _TIMES["default"], 2)


def test_default_inference(benchmark, setup):
    kwargs = {"input_scale": "absolute", "mask": setup["mask"]}
    result = benchmark.pedantic(run_network, args=(setup["volume"], setup["model"]), kwargs=kwargs, rounds=1,
                                iterations=1)
    _record(benchmark, "default", setup["volume"].shape[0])
    assert result.uncertainty is None


def test_mc_dropout_8_passes(benchmark, setup):
    kwargs = {"input_scale": "absolute", "mask": setup["mask"], "mc_samples": 8}
    result = benchmark.pedantic(run_network, args=(setup["volume"], setup["model"]), kwargs=kwargs, rounds=1,
                                iterations=1)
    _record(benchmark, "mc8", setup["volume"].shape[0])
    assert all(np.isfinite(v).all() for v in result.uncertainty.values())


def test_physics_consistency(benchmark, setup):
    args = (setup["volume"], setup["t1"], setup["t2"], setup["sequence"])
    c = benchmark.pedantic(physics_consistency, args=args, kwargs={"mask": setup["mask"]}, rounds=1, iterations=1)
    _record(benchmark, "consistency", setup["volume"].shape[0])
    if benchmark.stats is not None:
        benchmark.extra_info["brain_voxels"] = int(setup["mask"].sum())
    assert np.all((c >= 0) & (c <= 1))
