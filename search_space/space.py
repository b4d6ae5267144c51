"""The search space: choices, sampling, variation, encoding, validation and block specs."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np

from .arch import Arch, ArchError, LayerChoice, StageChoice
from .config import SpaceConfig, load_config
from .specs import BlockSpec, conv_out, make_divisible


def _rng(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _norm(value: float, choices: tuple) -> float:
    """Position of ``value`` in [0, 1] between the smallest and largest choice."""
    lo, hi = min(choices), max(choices)
    return 0.0 if hi == lo else (value - lo) / (hi - lo)


class SearchSpace:
    """A block search space (stages of layers; per layer block type, kernel, expansion).

    Architectures are :class:`Arch` values. Internally an arch is also a fixed-length
    gene vector of choice indices (resolution, then per stage: depth, width and one
    layer option per layer slot), which ``mutate``, ``crossover`` and ``suggest`` use.
    """

    def __init__(self, config: SpaceConfig):
        self.config = config
        self.name = config.name
        self._options = [tuple(LayerChoice(*o) for o in s.layer_options()) for s in config.stages]

    @classmethod
    def from_config(cls, source: str | Path | dict) -> "SearchSpace":
        """From a preset name (``cifar``, ``imagenet``), a YAML/TOML file, or a dict."""
        return cls(load_config(source))

    def __repr__(self) -> str:
        return f"SearchSpace({self.name!r}, size={self.size():.3g}, fingerprint={self.fingerprint})"

    @cached_property
    def fingerprint(self) -> str:
        """Identifies the space; tables and predictors built for another space refuse this one."""
        return self.config.fingerprint()

    # ---- structure -------------------------------------------------------------------
    def stage_channels(self, stage: int, width: float) -> int:
        """Output channels of ``stage`` at width multiplier ``width``."""
        return make_divisible(self.config.stages[stage].channels * width)

    def layer_options(self, stage: int) -> tuple[LayerChoice, ...]:
        """Every choice a layer of ``stage`` may take."""
        return self._options[stage]

    def stage_sizes(self, resolution: int) -> list[tuple[int, int]]:
        """(input size, output size) of every stage at ``resolution``."""
        size = conv_out(resolution, self.config.stem_stride)
        sizes = []
        for st in self.config.stages:
            out = conv_out(size, st.stride)
            sizes.append((size, out))
            size = out
        return sizes

    def size(self) -> int:
        """Number of distinct architectures."""
        n = len(self.config.resolutions)
        for st, opts in zip(self.config.stages, self._options):
            n *= len(st.widths) * sum(len(opts) ** d for d in st.depths)
        return n

    # ---- validation ------------------------------------------------------------------
    def validate(self, arch: Arch | str) -> Arch:
        """Return ``arch`` (parsed if a string); raise :class:`ArchError` naming the bad choice."""
        arch = Arch.parse(arch) if isinstance(arch, str) else arch
        cfg = self.config
        if arch.resolution not in cfg.resolutions:
            raise ArchError(f"arch {arch}: resolution {arch.resolution} not in space {self.name!r}: expected one of {list(cfg.resolutions)}")
        if len(arch.stages) != len(cfg.stages):
            raise ArchError(f"arch {arch}: has {len(arch.stages)} stages, space {self.name!r} expects {len(cfg.stages)}")
        for i, (s, st) in enumerate(zip(arch.stages, cfg.stages)):
            if s.width not in st.widths:
                raise ArchError(f"arch {arch}: stage {i} width {s.width:g} not allowed: expected one of {list(st.widths)}")
            if s.depth not in st.depths:
                raise ArchError(f"arch {arch}: stage {i} depth {s.depth} not allowed: expected one of {list(st.depths)}")
            for j, l in enumerate(s.layers):
                where = f"arch {arch}: stage {i} layer {j}"
                if l.block not in st.blocks:
                    raise ArchError(f"{where} block {l.block!r} not allowed: expected one of {list(st.blocks)}")
                if l.kernel not in st.kernels:
                    raise ArchError(f"{where} kernel {l.kernel} not allowed: expected one of {list(st.kernels)}")
                if l.expansion not in st.expansions[l.block]:
                    raise ArchError(f"{where} {l.block} expansion {l.expansion:g} not allowed: expected one of {list(st.expansions[l.block])}")
        return arch

    def parse(self, text: str) -> Arch:
        """Parse an arch string and check it belongs to this space."""
        return self.validate(Arch.parse(text))

    # ---- genes: the fixed-length view used for variation and Optuna ----------------------
    @cached_property
    def gene_choices(self) -> list[tuple[str, tuple]]:
        """(name, choices) of every gene, in order."""
        genes = [("resolution", self.config.resolutions)]
        for i, st in enumerate(self.config.stages):
            genes += [(f"s{i}_depth", st.depths), (f"s{i}_width", st.widths)]
            genes += [(f"s{i}_l{j}", tuple(str(o) for o in self._options[i])) for j in range(max(st.depths))]
        return genes

    def from_genes(self, genes) -> Arch:
        """Arch from choice indices (layer slots beyond a stage's depth are ignored)."""
        cfg = self.config
        it = iter(int(g) for g in genes)
        res = cfg.resolutions[next(it)]
        stages = []
        for st, opts in zip(cfg.stages, self._options):
            depth, width = st.depths[next(it)], st.widths[next(it)]
            layers = [opts[next(it)] for _ in range(max(st.depths))]
            stages.append(StageChoice(width, tuple(layers[:depth])))
        return Arch(res, tuple(stages))

    def to_genes(self, arch: Arch, rng=None) -> np.ndarray:
        """Choice indices of ``arch``; unused layer slots are filled at random (or with 0)."""
        cfg = self.config
        rng = _rng(rng) if rng is not None else None
        genes = [cfg.resolutions.index(arch.resolution)]
        for s, st, opts in zip(arch.stages, cfg.stages, self._options):
            genes += [st.depths.index(s.depth), st.widths.index(s.width)]
            idx = {o: n for n, o in enumerate(opts)}
            for j in range(max(st.depths)):
                if j < s.depth:
                    genes.append(idx[s.layers[j]])
                else:
                    genes.append(int(rng.integers(len(opts))) if rng is not None else 0)
        return np.asarray(genes, dtype=np.int64)

    def sample(self, rng=None) -> Arch:
        """A uniformly random choice per gene."""
        rng = _rng(rng)
        return self.from_genes([rng.integers(len(c)) for _, c in self.gene_choices])

    def mutate(self, arch: Arch, rng=None, prob: float = 0.1) -> Arch:
        """Resample each gene with probability ``prob``."""
        rng = _rng(rng)
        genes = self.to_genes(arch, rng)
        for g, (_, choices) in enumerate(self.gene_choices):
            if rng.random() < prob:
                genes[g] = rng.integers(len(choices))
        return self.from_genes(genes)

    def crossover(self, a: Arch, b: Arch, rng=None) -> Arch:
        """Uniform crossover: each gene from either parent with equal probability."""
        rng = _rng(rng)
        ga, gb = self.to_genes(a, rng), self.to_genes(b, rng)
        return self.from_genes(np.where(rng.random(len(ga)) < 0.5, ga, gb))

    def suggest(self, trial) -> Arch:
        """Optuna define-by-run: one categorical parameter per gene (all slots, so the
        search space is static and NSGA-II can cross over every gene)."""
        return self.from_genes([choices.index(trial.suggest_categorical(name, list(choices)))
                                for name, choices in self.gene_choices])

    def from_params(self, params: dict) -> Arch:
        """Arch from Optuna parameters written by :meth:`suggest`."""
        try:
            return self.from_genes([choices.index(params[name]) for name, choices in self.gene_choices])
        except (KeyError, ValueError) as e:
            raise ArchError(f"parameters do not describe an arch of space {self.name!r}: {e}") from None

    def _extreme(self, pick, block: str | None = None) -> Arch:
        # "per_stage" rates every option as a stride-1 layer and repeats the pick through the
        # stage (the rule of every space before conv_pool); "per_layer" rates each layer as it
        # is, since a downsampling conv_pool (a full-resolution conv) outweighs a strided block.
        cfg = self.config
        stages, c_in = [], cfg.stem_channels
        for i, (st, opts) in enumerate(zip(cfg.stages, self._options)):
            # ``block``: only that type's options where the stage offers it (the largest of one type)
            opts = tuple(o for o in opts if o.block == block) or opts
            width = pick(st.widths)
            c = self.stage_channels(i, width)
            depth = pick(st.depths)
            if cfg.extremes == "per_layer":
                layers = tuple(pick(opts, key=lambda o, j=j: self._layer_spec(i, j, o, c_in if j == 0 else c, c, 8).flops())
                               for j in range(depth))
            else:  # one pick, repeated: every layer is rated alike
                layers = (pick(opts, key=lambda o: self._layer_spec(i, 1, o, c, c, 8).flops()),) * depth
            stages.append(StageChoice(width, layers))
            c_in = c
        return Arch(pick(cfg.resolutions), tuple(stages))

    def largest(self) -> Arch:
        """Most FLOPs: largest resolution, depth and width; the costliest option per stage or
        per layer (the space's ``extremes`` rule)."""
        return self._extreme(max)

    def smallest(self) -> Arch:
        """Fewest FLOPs: the cheapest choice everywhere (by the same rule as :meth:`largest`)."""
        return self._extreme(min)

    def extremes(self) -> dict[str, Arch]:
        """Named corner architectures, distinct ones only: ``largest``, ``smallest`` and
        ``largest_<block>`` for every block type the space offers (the largest sizes with that
        type wherever a stage allows it). Accuracy datasets and first search populations include
        them, so a predictor sees the top of the space, not only the spread-sampled middle."""
        named = {"largest": self.largest(), "smallest": self.smallest()}
        for block in dict.fromkeys(o.block for opts in self._options for o in opts):
            named[f"largest_{block}"] = self._extreme(max, block)
        seen, out = set(), {}
        for name, arch in named.items():
            if arch not in seen:
                seen.add(arch)
                out[name] = arch
        return out

    def to_params(self, arch: Arch) -> dict:
        """Optuna parameters (as :meth:`suggest` names them) that describe ``arch``; unused
        layer slots take their first choice."""
        genes = self.to_genes(self.validate(arch))
        return {name: choices[g] for (name, choices), g in zip(self.gene_choices, genes)}

    # ---- encoding for predictors ------------------------------------------------------
    @cached_property
    def encoding_size(self) -> int:
        """Length of :meth:`encode` vectors."""
        n = 1
        for st in self.config.stages:
            n += 2 + max(st.depths) * (1 + len(st.blocks) + 2)
        return n

    def encode(self, arch: Arch) -> np.ndarray:
        """Fixed-length float vector: resolution, per stage depth and width, per layer slot
        an active flag, a block-type one-hot, kernel and expansion (each scaled to [0, 1])."""
        cfg = self.config
        v = [_norm(arch.resolution, cfg.resolutions)]
        for s, st in zip(arch.stages, cfg.stages):
            v += [_norm(s.depth, st.depths), _norm(s.width, st.widths)]
            for j in range(max(st.depths)):
                if j < s.depth:
                    l = s.layers[j]
                    v += [1.0] + [float(b == l.block) for b in st.blocks]
                    v += [_norm(l.kernel, st.kernels), _norm(l.expansion, st.expansions[l.block])]
                else:
                    v += [0.0] * (1 + len(st.blocks) + 2)
        return np.asarray(v, dtype=np.float32)

    def encode_many(self, archs) -> np.ndarray:
        """Stack :meth:`encode` over many archs, shape (n, encoding_size)."""
        return np.stack([self.encode(a) for a in archs]) if archs else np.zeros((0, self.encoding_size), np.float32)

    # ---- block specs, FLOPs, params --------------------------------------------------
    def _layer_spec(self, stage: int, layer: int, opt: LayerChoice, c_in: int, c_out: int, size: int) -> BlockSpec:
        st = self.config.stages[stage]
        return BlockSpec(opt.block, c_in, c_out, size, st.stride if layer == 0 else 1, opt.kernel,
                         opt.expansion, st.se, self.config.act)

    def stem_spec(self, resolution: int) -> BlockSpec:
        """The stem at ``resolution``."""
        c = self.config
        return BlockSpec("stem", c.in_channels, c.stem_channels, resolution, c.stem_stride, c.stem_kernel, 1, False, c.act)

    def head_spec(self, c_in: int, size: int) -> BlockSpec:
        """The classifier head on ``c_in`` channels of ``size`` x ``size``."""
        c = self.config
        return BlockSpec("head", c_in, c.num_classes, size, 1, 1, c.head_channels or 0, False, c.act)

    def block_specs(self, arch: Arch) -> list[BlockSpec]:
        """Stem, every active layer, head: the units latency tables time and sum."""
        specs = [self.stem_spec(arch.resolution)]
        c_in = self.config.stem_channels
        for i, (s, (size_in, size_out)) in enumerate(zip(arch.stages, self.stage_sizes(arch.resolution))):
            c_out = self.stage_channels(i, s.width)
            for j, layer in enumerate(s.layers):
                specs.append(self._layer_spec(i, j, layer, c_in, c_out, size_in if j == 0 else size_out))
                c_in = c_out
        specs.append(self.head_spec(c_in, self.stage_sizes(arch.resolution)[-1][1]))
        return specs

    def unique_block_specs(self) -> list[BlockSpec]:
        """Every distinct spec any arch of the space can contain (sorted)."""
        cfg = self.config
        specs = set()
        for res in cfg.resolutions:
            specs.add(self.stem_spec(res))
            prev = {cfg.stem_channels}
            for i, (st, (size_in, size_out)) in enumerate(zip(cfg.stages, self.stage_sizes(res))):
                outs = {self.stage_channels(i, w) for w in st.widths}
                for o in self._options[i]:
                    for c_out in outs:
                        specs.update(self._layer_spec(i, 0, o, c_in, c_out, size_in) for c_in in prev)
                        if max(st.depths) > 1:
                            specs.add(self._layer_spec(i, 1, o, c_out, c_out, size_out))
                prev = outs
            specs.update(self.head_spec(c, self.stage_sizes(res)[-1][1]) for c in prev)
        return sorted(specs)

    def flops(self, arch: Arch) -> int:
        """FLOPs at batch 1 (2 x MACs, as torch's FlopCounterMode counts)."""
        return sum(s.flops() for s in self.block_specs(arch))

    def params(self, arch: Arch) -> int:
        """Trainable parameters of the standalone subnet."""
        return sum(s.params() for s in self.block_specs(arch))

