"""A block type registered in one place (``register_block_type`` plus its module class) works end
to end: arch strings, configs, FLOPs and params, the supernet and its extracted subnets, latency
measurement; bad registrations fail in one line."""

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import latency_tables as lt
from search_space import ArchError, ConfigError, SearchSpace, Supernet, UserError, build_block
from search_space.blocks import Block
from search_space.specs import conv_cost, register_block_type, se_cost, unregister_block_type


class DepthwiseSeparable(Block):
    """kxk depthwise (strided), then 1x1 pointwise (MobileNetV1): the toy block type."""

    @staticmethod
    def layout(s, projection):
        return {"dw": dict(cin=s.c_in, cout=s.c_in, k=s.kernel, stride=s.stride, depthwise=True, act=s.act),
                "pw": dict(cin=s.c_in, cout=s.c_out, k=1, act=s.act)}

    def forward(self, x):
        return self.se(self.pw(self.dw(x)))


def dsep_cost(s):
    parts = [conv_cost(s.c_in, s.c_in, s.kernel, s.out_size, groups=s.c_in), conv_cost(s.c_in, s.c_out, 1, s.out_size)]
    return parts + ([se_cost(s.c_out)] if s.se else [])


TOY = {
    "name": "toy_blocks", "in_channels": 3, "num_classes": 5, "resolutions": [8, 12],
    "stem": {"channels": 8, "kernel": 3, "stride": 1},
    "defaults": {"widths": [0.5, 1.0], "blocks": ["mbconv", "dsep"], "kernels": [3, 5],
                 "expansions": {"mbconv": [2], "dsep": [1]}},
    "stages": [{"channels": 16, "stride": 2, "depths": [1, 2]}, {"channels": 24, "stride": 1, "depths": [1, 2], "se": True}],
}


@pytest.fixture(scope="module")
def dsep():
    register_block_type("dsep", "ds", mid=lambda s: int(s.expansion), cost=dsep_cost, module=DepthwiseSeparable)
    yield SearchSpace.from_config(TOY)
    unregister_block_type("dsep")


def test_registered_block_in_arch_strings_and_configs(dsep):
    arch = dsep.parse("r8/w1:ds3e1,mb5e2/w0.5:ds5e1")
    assert str(arch) == "r8/w1:ds3e1,mb5e2/w0.5:ds5e1" and arch.stages[0].layers[0].block == "dsep"
    rng = np.random.default_rng(0)
    assert any(l.block == "dsep" for _ in range(20) for st in dsep.sample(rng).stages for l in st.layers)
    with pytest.raises(ConfigError, match="block types from .*'dsep'"):
        SearchSpace.from_config({**TOY, "defaults": {**TOY["defaults"], "blocks": ["dsepx"]}})


def test_registered_block_in_the_supernet_flops_and_params(dsep):
    torch.manual_seed(0)
    net = Supernet(dsep).eval()
    rng = np.random.default_rng(1)
    for _ in range(6):
        arch = dsep.sample(rng)
        net.set_active(arch)
        sub = net.extract(arch).eval()
        x = torch.randn(2, 3, arch.resolution, arch.resolution)
        with torch.no_grad():
            assert (net(x) - sub(x)).abs().max().item() < 1e-5, arch
            with FlopCounterMode(display=False) as fc:
                sub(x[:1])
        assert fc.get_total_flops() == dsep.flops(arch), arch
        assert sum(p.numel() for p in sub.parameters()) == dsep.params(arch), arch


def test_registered_block_is_timed_like_the_others(dsep):
    spec = next(s for s in dsep.unique_block_specs() if s.block == "dsep")
    backend = lt.make_backend("onnxruntime", min_rounds=2, max_rounds=3, round_ms=0.3, warmup_ms=1.0, min_runs_per_round=2)
    stats = backend.measure(build_block(spec), (spec.c_in, spec.size, spec.size))
    assert 0 < stats.ms <= stats.p90_ms


def test_bad_registrations_fail_in_one_line(dsep):
    kw = dict(mid=lambda s: 1, cost=dsep_cost, module=DepthwiseSeparable)
    for name, abbrev, needle in [("dsep", "zz", "block type 'dsep' is already registered"),
                                 ("other", "mb", "abbreviation 'mb' for 'other' is invalid or taken"),
                                 ("other", "x1", "abbreviation 'x1'"), ("Bad Name", "bn", "name 'Bad Name' is invalid")]:
        with pytest.raises(UserError, match=needle):
            register_block_type(name, abbrev, **kw)


def test_an_unregistered_type_is_gone_from_arch_strings():
    from search_space import Arch

    register_block_type("dsep2", "dt", mid=lambda s: 1, cost=dsep_cost, module=DepthwiseSeparable)
    assert Arch.parse("r8/w1:dt3e1").stages[0].layers[0].block == "dsep2"
    unregister_block_type("dsep2")
    with pytest.raises(ArchError, match="malformed layer 'dt3e1'"):
        Arch.parse("r8/w1:dt3e1")
