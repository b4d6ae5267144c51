"""Search space: arch strings, configs, variation, encoding, specs, FLOPs and the supernet."""

import itertools

import numpy as np
import optuna
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from search_space import (Arch, ArchError, BlockSpec, ConfigError, SearchSpace, Supernet, build_block,
                          load_config, recalibrate_bn)
from search_space.specs import conv_out

PRESETS = ["cifar", "cifar_res", "imagenet", "cifar_pool"]

TINY = {
    "name": "tiny", "in_channels": 1, "num_classes": 3, "resolutions": [8, 12],
    "stem": {"channels": 8, "kernel": 3, "stride": 1},
    "defaults": {"widths": [0.5, 1.0], "blocks": ["mbconv", "resnet"], "kernels": [3],
                 "expansions": {"mbconv": [2], "resnet": [1]}},
    "stages": [{"channels": 16, "stride": 2, "depths": [1, 2]}, {"channels": 16, "stride": 1, "depths": [1]}],
}

# conv_pool at an odd resolution (7 -> 4 when pooling), beside blocks that downsample with strides
TINY_POOL = {
    **TINY, "name": "tiny_pool", "resolutions": [7, 8], "extremes": "per_layer",
    "defaults": {**TINY["defaults"], "blocks": ["conv_pool", "mbconv", "resnet"],
                 "expansions": {"conv_pool": [1], "mbconv": [2], "resnet": [1]}},
}


def _randomise_bn(net):
    """Random BN statistics and affine terms, so equality tests are not trivially satisfied."""
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net


@pytest.fixture(scope="module", params=PRESETS)
def space(request):
    return SearchSpace.from_config(request.param)


def test_arch_string_and_json_round_trip(space):
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = space.sample(rng)
        assert Arch.parse(str(a)) == a
        assert Arch.from_json(a.to_json()) == a
        assert hash(Arch.parse(str(a))) == hash(a)
        assert space.validate(str(a)) == a


def test_layers_beyond_depth_do_not_distinguish_archs(space):
    rng = np.random.default_rng(1)
    a = space.sample(rng)
    genes = space.to_genes(a, rng)
    other = space.to_genes(a, np.random.default_rng(99))
    assert space.from_genes(genes) == space.from_genes(other) == a
    assert str(space.from_genes(other)) == str(a)


@pytest.mark.parametrize("text,needle", [
    ("xyz", "malformed arch string 'xyz'"),
    ("r32/w1:mb3e6", "has 1 stages"),
    ("r33/w1:mb3e6/w1:mb3e6/w1:mb3e6/w1:mb3e6", "resolution 33"),
    ("r32/w1:mb3e6/w1:mb7e6/w1:mb3e6/w1:mb3e6", "stage 1 layer 0 kernel 7"),
    ("r32/w1:mb3e6/w1:mb3e6/w0.3:mb3e6/w1:mb3e6", "stage 2 width 0.3"),
    ("r32/w1:mb3e5/w1:mb3e6/w1:mb3e6/w1:mb3e6", "stage 0 layer 0 mbconv expansion 5"),
    ("r32/w1:mb3e6,mb3e6,mb3e6/w1:mb3e6/w1:mb3e6/w1:mb3e6", "stage 0 depth 3"),
    ("r32/w1:zz3e6/w1:mb3e6/w1:mb3e6/w1:mb3e6", "malformed layer 'zz3e6'"),
    ("r32/w1:cp3e1/w1:mb3e6/w1:mb3e6/w1:mb3e6", "stage 0 layer 0 block 'conv_pool' not allowed"),
])
def test_bad_arch_strings_name_the_problem(text, needle):
    space = SearchSpace.from_config("cifar")
    with pytest.raises(ArchError) as e:
        space.parse(text)
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("patch,needle", [
    ({"stages": None}, "'stages'"),
    ({"colour": 1}, "'colour': unknown key"),
    ({"act": "gelu"}, "'act'"),
    ({"stages": [{"channels": 16, "stride": 3, "depths": [1]}]}, "'stages[0].stride'"),
    ({"stages": [{"channels": 16, "stride": 1, "depths": [1], "kernels": [4]}]}, "'stages[0].kernels'"),
    ({"stages": [{"channels": 16, "stride": 1, "depths": [1], "blocks": ["conv"]}]}, "'stages[0].blocks'"),
    ({"stages": [{"channels": 16, "stride": 1, "depths": [1], "expansions": {"mbconv": [2]}}]},
     "'stages[0].expansions.resnet': missing"),
    ({"stages": [{"stride": 1, "depths": [1]}]}, "'stages[0].channels'"),
    ({"extremes": "biggest"}, "'extremes': expected one of ['per_stage', 'per_layer'], got 'biggest'"),
])
def test_config_errors_point_at_the_key(patch, needle):
    raw = {**TINY, **patch}
    if patch.get("stages", 0) is None:
        del raw["stages"]
    with pytest.raises(ConfigError) as e:
        load_config(raw)
    assert needle in str(e.value)


def test_config_files_yaml_and_toml(tmp_path):
    import yaml
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(TINY))
    toml = """name = "tiny"\nin_channels = 1\nnum_classes = 3\nresolutions = [8, 12]\n
[stem]\nchannels = 8\nkernel = 3\nstride = 1\n
[defaults]\nwidths = [0.5, 1.0]\nblocks = ["mbconv", "resnet"]\nkernels = [3]\n
[defaults.expansions]\nmbconv = [2]\nresnet = [1]\n
[[stages]]\nchannels = 16\nstride = 2\ndepths = [1, 2]\n
[[stages]]\nchannels = 16\nstride = 1\ndepths = [1]\n"""
    (tmp_path / "s.toml").write_text(toml)
    a, b = SearchSpace.from_config(tmp_path / "s.yaml"), SearchSpace.from_config(tmp_path / "s.toml")
    assert a.fingerprint == b.fingerprint == SearchSpace.from_config(TINY).fingerprint
    with pytest.raises(ConfigError, match="nope"):
        load_config("nope")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_config_json_round_trip():
    for name in PRESETS:
        cfg = load_config(name)
        assert load_config(cfg.to_json()) == cfg


def test_checkpoint_round_trip_and_errors(tmp_path):
    from search_space import CheckpointError, load_supernet, save_supernet
    space = SearchSpace.from_config(TINY)
    net = Supernet(space)
    save_supernet(tmp_path / "c.pt", net, {"epochs": 1})
    net2, blob = load_supernet(tmp_path / "c.pt", space)
    assert blob["meta"] == {"epochs": 1}
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), net2.state_dict().values()))
    with pytest.raises(CheckpointError, match="belongs to space 'tiny'"):
        load_supernet(tmp_path / "c.pt", SearchSpace.from_config("cifar"))
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not readable"):
        load_supernet(tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_supernet(tmp_path / "none.pt")


def test_size_counts_distinct_archs_exactly():
    space = SearchSpace.from_config(TINY)
    choices = [range(len(c)) for _, c in space.gene_choices]
    distinct = {space.from_genes(g) for g in itertools.product(*choices)}
    assert len(distinct) == space.size()
    assert SearchSpace.from_config("cifar").size() > 1e14


def test_variation_and_encoding(space):
    rng = np.random.default_rng(2)
    archs = [space.sample(rng) for _ in range(100)]
    for a, b in zip(archs, archs[1:]):
        space.validate(space.mutate(a, rng, prob=0.3))
        child = space.crossover(a, b, rng)
        space.validate(child)
        # every stage of the child comes from one of the parents, gene by gene
        assert all(cs.width in (sa.width, sb.width) for cs, sa, sb in zip(child.stages, a.stages, b.stages))
    assert space.mutate(archs[0], rng, prob=0.0) == archs[0]
    assert sum(space.mutate(archs[0], rng, prob=1.0) != archs[0] for _ in range(10)) >= 9
    enc = space.encode_many(archs)
    assert enc.shape == (100, space.encoding_size) and enc.min() >= 0 and enc.max() <= 1
    assert len({e.tobytes() for e in enc}) == len(set(archs))


def test_optuna_suggest_round_trip(space):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        trial = study.ask()
        arch = space.suggest(trial)
        space.validate(arch)
        assert space.from_params(trial.params) == arch


def test_block_specs_cover_every_sampled_arch(space):
    unique = set(space.unique_block_specs())
    rng = np.random.default_rng(3)
    for _ in range(300):
        specs = space.block_specs(space.sample(rng))
        assert set(specs) <= unique
        assert specs[0].block == "stem" and specs[-1].block == "head"
    for s in list(unique)[:50]:
        assert BlockSpec.from_key(s.key) == s


def test_largest_and_smallest(space):
    rng = np.random.default_rng(4)
    big, small = space.flops(space.largest()), space.flops(space.smallest())
    for _ in range(50):
        assert small <= space.flops(space.sample(rng)) <= big


@pytest.mark.parametrize("preset,largest,smallest,mparams,gflops", [
    # exactly the CIFAR ResNet-18
    ("cifar_res", "r32/" + "/".join(["w1:rn3e1,rn3e1"] * 4), "r32/" + "/".join(["w0.5:pc3e2"] * 4), 11.17, 1.11),
    # the 2x-wide ResNet-9: conv_pool downsamples, a resnet block follows (extremes: per_layer)
    ("cifar_pool", "r32/" + "/".join(["w1:cp3e1,rn3e1"] * 3), "r32/w0.5:rn3e0.5/w0.5:fmb3e1/w0.5:fmb3e1", 30.99, 3.63),
])
def test_preset_is_topped_by_its_reference_net(preset, largest, smallest, mparams, gflops):
    """These presets exist for their largest subnet; every other block type stays searchable."""
    space = SearchSpace.from_config(preset)
    assert str(space.largest()) == largest and str(space.smallest()) == smallest
    assert space.parse(largest) == space.largest() and str(space.parse(smallest)) == smallest
    assert round(space.params(space.largest()) / 1e6, 2) == mparams
    assert round(space.flops(space.largest()) / 1e9, 2) == gflops
    rng = np.random.default_rng(0)
    seen = {layer.block for _ in range(100) for stage in space.sample(rng).stages for layer in stage.layers}
    assert seen == {b for st in space.config.stages for b in st.blocks}


def test_default_extremes_rule_keeps_old_spaces():
    """Spaces without 'extremes' rate options per stage, as before, and keep their fingerprints."""
    space = SearchSpace.from_config("cifar")
    assert space.config.extremes == "per_stage" and "extremes" not in space.config.to_json()
    assert space.fingerprint == "f91366196674ccb7"
    assert str(space.largest()) == "r32/" + "/".join(["w1:fmb5e3,fmb5e3"] + ["w1:fmb5e3,fmb5e3,fmb5e3"] * 3)
    explicit = SearchSpace.from_config({**space.config.to_json(), "extremes": "per_stage"})
    assert explicit.fingerprint == space.fingerprint
    per_layer = SearchSpace.from_config({**space.config.to_json(), "extremes": "per_layer"})
    assert per_layer.config.to_json()["extremes"] == "per_layer" and per_layer.fingerprint != space.fingerprint


def test_per_layer_extremes_bound_per_stage(space):
    raw = space.config.to_json()
    per_stage, per_layer = (SearchSpace.from_config({**raw, "extremes": e}) for e in ("per_stage", "per_layer"))
    assert per_layer.flops(per_layer.largest()) >= per_stage.flops(per_stage.largest())
    assert per_layer.flops(per_layer.smallest()) <= per_stage.flops(per_stage.smallest())


def test_per_layer_extremes_are_the_exact_extremes():
    """On a space small enough to enumerate, per_layer finds the true FLOPs extremes, which per_stage
    misses: it rates a downsampling conv_pool (a full-resolution conv) as a stride-1 layer."""
    space = SearchSpace.from_config(TINY_POOL)
    choices = [range(len(c)) for _, c in space.gene_choices]
    flops = [space.flops(space.from_genes(g)) for g in itertools.product(*choices)]
    assert space.flops(space.largest()) == max(flops) and space.flops(space.smallest()) == min(flops)
    per_stage = SearchSpace.from_config({**TINY_POOL, "extremes": "per_stage"})
    assert per_stage.flops(per_stage.largest()) < max(flops)


@pytest.fixture(scope="module")
def supernets():
    torch.manual_seed(0)
    return {name: _randomise_bn(Supernet(SearchSpace.from_config(name))).eval() for name in PRESETS}


@pytest.mark.parametrize("name", PRESETS)
def test_extracted_subnet_matches_supernet_and_flop_counter(name, supernets):
    net = supernets[name]
    space = net.space
    rng = np.random.default_rng(5)
    seen = set()
    for i in range(20):
        arch = space.sample(rng)
        seen |= {layer.block for stage in arch.stages for layer in stage.layers}
        net.set_active(arch)
        sub = net.extract(arch).eval()
        x = torch.randn(2, 3, arch.resolution, arch.resolution)
        with torch.no_grad():
            diff = (net(x) - sub(x)).abs().max().item()
        assert diff < 1e-5, f"{arch}: {diff}"
        if i < 5 or name == "cifar":
            with FlopCounterMode(display=False) as fc, torch.no_grad():
                sub(x[:1])
            assert fc.get_total_flops() == space.flops(arch)
            assert sum(p.numel() for p in sub.parameters()) == space.params(arch)
        # no elastic logic is left in the standalone model
        assert all(type(m).__module__ != "search_space.elastic" for m in sub.modules())
    assert seen == {b for st in space.config.stages for b in st.blocks}  # every block type was compared


@pytest.mark.parametrize("se", [False, True])
@pytest.mark.parametrize("text", [
    "r7/w0.5:cp3e1,cp3e1/w1:cp3e1",  # pool 7 -> 4 at 8 -> 8 channels, residual, then 8 -> 16 (no shortcut)
    "r8/w1:cp3e1,rn3e1/w0.5:cp3e1",  # pool 8 -> 4 at 8 -> 16 channels, then 16 -> 8
])
def test_conv_pool_slots_match_static_blocks_and_flop_counter(text, se):
    """Block by block: the supernet's slot narrowed to a spec computes what build_block(spec) computes
    with the sliced weights, at the spec's output size, with the spec's analytic FLOPs and params."""
    space = SearchSpace.from_config({**TINY_POOL, "stages": [{**st, "se": se} for st in TINY_POOL["stages"]]})
    arch = space.parse(text)
    assert str(arch) == text
    torch.manual_seed(0)
    net = _randomise_bn(Supernet(space)).eval()
    net.set_active(arch)
    sub = net.extract(arch)
    specs = space.block_specs(arch)[1:-1]
    pooled = next(s for s in specs if s.block == "conv_pool")
    assert pooled.stride == 2 and conv_out(pooled.size, 2) == 4
    x = torch.randn(2, 1, arch.resolution, arch.resolution)
    with torch.no_grad():
        h = net.stem(x)
        k = 0
        for i, stage in enumerate(arch.stages):
            for j, layer in enumerate(stage.layers):
                spec, static = specs[k], sub.blocks[k]
                y = net.stages[i][j][layer.block](h)
                with FlopCounterMode(display=False) as fc:
                    y_static = static(h[:1])
                assert y.shape == (2, spec.c_out, conv_out(spec.size, spec.stride), conv_out(spec.size, spec.stride))
                torch.testing.assert_close(y[:1], y_static, atol=1e-5, rtol=1e-5)
                assert fc.get_total_flops() == spec.flops(), spec
                assert sum(p.numel() for p in static.parameters()) == spec.params(), spec
                if layer.block == "conv_pool":  # silence the conv path: what is left is the shortcut
                    torch.nn.init.zeros_(static.conv.bn.weight), torch.nn.init.zeros_(static.conv.bn.bias)
                    assert torch.equal(static(h), h if spec.residual else torch.zeros_like(y))
                h, k = y, k + 1


def test_block_modules_build_from_specs():
    space = SearchSpace.from_config("cifar")
    for spec in space.unique_block_specs()[::37]:
        m = build_block(spec).eval()
        x = torch.randn(1, spec.c_in, spec.size, spec.size)
        y = m(x)
        assert y.shape == ((1, spec.c_out) if spec.block == "head" else (1, spec.c_out, spec.out_size, spec.out_size))


def test_bn_recalibration_and_train_mode_parity():
    space = SearchSpace.from_config(TINY)
    torch.manual_seed(1)
    net = Supernet(space)
    rng = np.random.default_rng(0)
    arch = space.sample(rng)
    while arch.stages[0].width == 1.0:  # want a narrowed subnet, so sliced statistics are exercised
        arch = space.sample(rng)
    net.set_active(arch)
    data = [torch.randn(16, 1, arch.resolution, arch.resolution) * 3 + 1 for _ in range(4)]
    recalibrate_bn(net, data)
    assert not net.training
    stem_bn = net.stem.conv.bn
    with torch.no_grad():
        feats = torch.cat([net.stem.conv.conv(x) for x in data])
    # cumulative average of per-batch means equals the mean over all batches (equal batch sizes)
    torch.testing.assert_close(stem_bn.running_mean, feats.mean((0, 2, 3)), atol=1e-5, rtol=1e-4)
    sub = net.extract(arch)
    with torch.no_grad():
        assert (net(data[0]) - sub(data[0])).abs().max() < 1e-5
    # train mode: the supernet's sliced BN and the static BN normalise identically
    net.train(), sub.train()
    with torch.no_grad():
        assert (net(data[1]) - sub(data[1])).abs().max() < 1e-4


def test_cli_space_commands(capsys):
    """`hwnas space show/sample/validate/flops` on the cifar_pool preset; bad input: one line, exit 2."""
    from hwnas.cli import main

    assert main(["space", "show", "--space", "cifar_pool"]) == 0
    out = capsys.readouterr().out
    assert "fingerprint d4f2f2f24b45d7af" in out and "unique block specs: 244" in out
    assert "largest  r32/w1:cp3e1,rn3e1/w1:cp3e1,rn3e1/w1:cp3e1,rn3e1  3631.0 MFLOPs  30.99M params  (per layer)" in out
    assert main(["space", "sample", "--space", "cifar_pool", "-n", "3", "--seed", "1"]) == 0
    archs = capsys.readouterr().out.split()
    space = SearchSpace.from_config("cifar_pool")
    assert len(archs) == 3 and all(str(space.parse(a)) == a for a in archs)
    assert main(["space", "validate", "--space", "cifar_pool", archs[0]]) == 0
    assert f"ok: {archs[0]}" in capsys.readouterr().out
    assert main(["space", "flops", "--space", "cifar_pool", "largest", "--blocks"]) == 0
    out = capsys.readouterr().out
    assert "FLOPs 3630.98 M" in out and "conv_pool:c128-256:r32:s2:k3:e1:se0:relu" in out
    for argv, needle in [(["space", "validate", "--space", "cifar", archs[0]], "space 'cifar' expects 4"),
                         (["space", "sample", "-n", "0"], "-n 0 is invalid; expected an integer >= 1"),
                         (["space", "show", "--space", "nope"], "unknown space preset 'nope'")]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert needle in err and "\n" not in err, err
