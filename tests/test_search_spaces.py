"""Search spaces, ArchConfig validation, identity, exact counts, sampling and encoding (pure Python)."""

import hashlib
import json
import random
import re

import pytest

from hwgpt_bench.search_spaces import (
    SPACES,
    ArchConfig,
    archs_from_dicts,
    encode,
    feature_names,
    get_space,
    random_arch,
    sample_archs,
)

PAPER_SPACES = {  # the table of the original benchmark: embed, layers, heads, mlp ratios
    "gpt-s": ((192, 384, 768), (10, 11, 12), (4, 8, 12), (2, 3, 4)),
    "gpt-m": ((256, 512, 1024), (22, 23, 24), (8, 12, 16), (2, 3, 4)),
    "gpt-l": ((320, 640, 1280), (34, 35, 36), (8, 16, 20), (2, 3, 4)),
    "gpt-s-wide": ((192, 384, 768), (3, 6, 12), (4, 8, 12), (1, 2, 4)),
    "gpt-m-wide": ((256, 512, 1024), (6, 12, 24), (4, 8, 16), (1, 2, 4)),
    "gpt-l-wide": ((320, 640, 1280), (9, 18, 36), (5, 10, 20), (1, 2, 4)),
    "gpt-xl-wide": ((400, 800, 1600), (12, 24, 48), (6, 12, 25), (1, 2, 4)),
}


@pytest.mark.parametrize("name", sorted(PAPER_SPACES))
def test_paper_spaces_exact(name):
    sp = get_space(name)
    assert (sp.embed_dims, sp.n_layers, sp.n_heads, sp.mlp_ratios) == PAPER_SPACES[name]
    assert (sp.head_size, sp.block_size, sp.vocab_size) == (64, 1024, 50304)


def test_largest_members_match_known_gpt2_sizes():
    # GPT-2 small is 124M with a 50257 vocab and learned positions; ours pads the vocab and uses RoPE.
    assert SPACES["gpt-s"].largest().num_params() == 123_689_472
    assert SPACES["gpt-xl-wide"].largest().num_params() == 1_556_048_000
    assert 1.5e9 < SPACES["gpt-xl-wide"].largest().num_params() < 1.6e9


def test_unknown_space_lists_allowed():
    with pytest.raises(ValueError, match=r"space: unknown search space 'gpt-q'.*gpt-s"):
        get_space("gpt-q")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"embed_dim": 100}, r"embed_dim: 100 is not allowed; allowed values: \[192, 384, 768\]"),
        ({"n_layer": 9}, r"n_layer: 9 is not allowed"),
        ({"n_head": (4,) * 9 + (5,)}, r"n_head\[9\]: 5 is not allowed; allowed values: \[4, 8, 12\]"),
        ({"mlp_ratio": (2,) * 9}, r"mlp_ratio: has 9 entries but n_layer is 10"),
        ({"bias": "yes"}, r"bias: 'yes' is not allowed"),
    ],
)
def test_archconfig_validation_names_field_and_allowed_values(kwargs, message):
    base = {"space": "gpt-s", "embed_dim": 192, "n_layer": 10, "n_head": (4,) * 10, "mlp_ratio": (2,) * 10,
            "bias": False}
    with pytest.raises(ValueError, match=message):
        ArchConfig(**{**base, **kwargs})


def test_canonical_round_trip_and_stable_id():
    arch = ArchConfig("gpt-s", 384, 10, (4, 8, 12, 4, 8, 12, 4, 8, 12, 4), (2, 3, 4) * 3 + (2,), True)
    assert arch.canonical == "gpt-s|e384|l10|h4,8,12,4,8,12,4,8,12,4|m2,3,4,2,3,4,2,3,4,2|b1"
    assert ArchConfig.from_canonical(arch.canonical) == arch
    assert arch.arch_id == hashlib.sha256(arch.canonical.encode()).hexdigest()[:12]
    assert arch.arch_id == "dd81d44d85ed"  # pinned: ids must never change between releases
    assert ArchConfig.from_dict(json.loads(arch.to_json())) == arch


def test_from_dict_rejects_wrong_id_and_unknown_fields():
    d = SPACES["gpt-nano"].smallest().to_dict()
    with pytest.raises(ValueError, match="arch_id"):
        ArchConfig.from_dict({**d, "arch_id": "000000000000"})
    with pytest.raises(ValueError, match=r"unknown fields \['colour'\]"):
        ArchConfig.from_dict({**d, "colour": 1})
    assert archs_from_dicts([{**d, "params": 1}]) == [SPACES["gpt-nano"].smallest()]


@pytest.mark.parametrize("name", sorted(SPACES))
def test_extremes_bound_every_member(name):
    sp = SPACES[name]
    rng = random.Random(1)
    sizes = [random_arch(sp, rng).num_params() for _ in range(200)]
    assert sp.smallest().num_params() <= min(sizes) and max(sizes) <= sp.largest().num_params()


def test_flops_hand_count_for_one_layer_arch():
    arch = SPACES["gpt-nano"].smallest()  # e128, 4 layers, 2 heads x 32 = 64 wide, ratio 2
    d, a, h, v, t = 128, 64, 256, 8192, 256
    per_token = 4 * (4 * d * a + 2 * d * h) + v * d
    attention = 4 * 2 * t * t * a
    assert arch.forward_flops(batch_size=3) == 2 * 3 * (t * per_token + attention)


def test_sampling_is_seeded_prefix_stable_and_distinct():
    a = sample_archs("gpt-s", 50, seed=0)
    assert [x.arch_id for x in a] == [x.arch_id for x in sample_archs("gpt-s", 50, seed=0)]
    assert [x.arch_id for x in a[:20]] == [x.arch_id for x in sample_archs("gpt-s", 20, seed=0)]
    assert len({x.arch_id for x in a}) == 50
    assert a[0] == SPACES["gpt-s"].smallest() and a[1] == SPACES["gpt-s"].largest()
    assert {x.arch_id for x in sample_archs("gpt-s", 50, seed=1)} != {x.arch_id for x in a}


def test_sampling_rejects_impossible_counts():
    with pytest.raises(ValueError, match="n: must be >= 0"):
        sample_archs("gpt-s", -1)


@pytest.mark.parametrize("name", sorted(SPACES))
def test_encoding_fixed_width_and_names(name):
    sp = SPACES[name]
    rows = [encode(a) for a in sample_archs(sp, 10, seed=3)]
    assert {len(r) for r in rows} == {len(feature_names(sp))} == {3 + 2 * sp.max_layers + 2}
    small = encode(sp.smallest())
    assert small[3 + sp.n_layers[0]] == 0 or sp.n_layers[0] == sp.max_layers  # padding beyond n_layer


def test_space_dict_is_json_ready():
    out = json.loads(json.dumps({n: s.to_dict() for n, s in SPACES.items()}))
    assert out["gpt-nano"]["vocab_size"] == 8192 and out["gpt-s"]["n_architectures"] == SPACES["gpt-s"].size()


# ---- strict types: a wrong type is an error, never another architecture --------------------------------------------
GPT_S = {"space": "gpt-s", "embed_dim": 384, "n_layer": 10, "n_head": [4] * 10, "mlp_ratio": [2] * 10, "bias": False}
INT_ALLOWED = {"embed_dim": r"\[192, 384, 768\]", "n_layer": r"\[10, 11, 12\]", "n_head": r"\[4, 8, 12\]",
               "mlp_ratio": r"\[2, 3, 4\]"}


@pytest.mark.parametrize("value", ["false", "true", "0", "1", 0, 1, 2, None, 0.0, [], "no"])
def test_bias_must_be_a_real_bool(value):
    message = (rf"^bias: {re.escape(repr(value))} is not allowed: expected a JSON boolean true/false, got "
               rf"{re.escape(repr(value))} \({type(value).__name__}\)$")
    with pytest.raises(ValueError, match=message):
        ArchConfig.from_dict({**GPT_S, "bias": value})
    with pytest.raises(ValueError, match=message):
        ArchConfig(**{**GPT_S, "bias": value})
    with pytest.raises(ValueError, match=message):
        archs_from_dicts([{**GPT_S, "bias": value, "params": 1}])


def test_bias_false_string_message_is_exact():
    with pytest.raises(ValueError) as err:
        ArchConfig.from_dict({**GPT_S, "bias": "false"})
    assert str(err.value) == "bias: 'false' is not allowed: expected a JSON boolean true/false, got 'false' (str)"


@pytest.mark.parametrize("field", ["embed_dim", "n_layer"])
@pytest.mark.parametrize("value", [384.7, 384.0, 10.0, "384", "10", True, False, None, [384]])
def test_global_sizes_must_be_real_ints(field, value):
    message = (rf"^{field}: {re.escape(repr(value))} is not allowed: expected a JSON integer, got "
               rf"{re.escape(repr(value))} \({type(value).__name__}\); allowed values: {INT_ALLOWED[field]}$")
    with pytest.raises(ValueError, match=message):
        ArchConfig.from_dict({**GPT_S, field: value})
    with pytest.raises(ValueError, match=message):
        ArchConfig(**{**GPT_S, field: value})
    with pytest.raises(ValueError, match=message):
        archs_from_dicts([{**GPT_S, field: value}])


@pytest.mark.parametrize("field", ["n_head", "mlp_ratio"])
@pytest.mark.parametrize("value", [4.0, 4.5, "4", True, None])
def test_every_per_layer_entry_must_be_a_real_int(field, value):
    values = list(GPT_S[field])
    values[7] = value
    message = (rf"^{field}\[7\]: {re.escape(repr(value))} is not allowed: expected a JSON integer, got "
               rf"{re.escape(repr(value))} \({type(value).__name__}\); allowed values: {INT_ALLOWED[field]}$")
    for variant in (values, tuple(values)):
        with pytest.raises(ValueError, match=message):
            ArchConfig.from_dict({**GPT_S, field: variant})
        with pytest.raises(ValueError, match=message):
            ArchConfig(**{**GPT_S, field: variant})


@pytest.mark.parametrize("value", ["4444444444", {"0": 4}, 4, None])
def test_per_layer_fields_must_be_arrays(value):
    with pytest.raises(ValueError, match=r"^n_head: .* is not allowed: expected a JSON array of integers"):
        ArchConfig.from_dict({**GPT_S, "n_head": value})


def test_true_is_not_taken_as_ratio_1_in_a_wide_space():
    # gpt-s-wide allows mlp_ratio 1 and int(True) == 1: True used to become the architecture with ratio 1
    assert 1 in SPACES["gpt-s-wide"].mlp_ratios
    with pytest.raises(ValueError, match=r"mlp_ratio\[0\]: True is not allowed: expected a JSON integer"):
        ArchConfig("gpt-s-wide", 192, 3, (4, 4, 4), (True, 1, 1), False)
    with pytest.raises(ValueError, match=r"bias: 1 is not allowed: expected a JSON boolean"):
        ArchConfig("gpt-s-wide", 192, 3, (4, 4, 4), (1, 1, 1), 1)
    assert ArchConfig("gpt-s-wide", 192, 3, (4, 4, 4), (1, 1, 1), False).mlp_ratio == (1, 1, 1)


def test_float_embed_dim_is_not_another_architecture():
    # 384.0 == 384 passed the choice check and was stored, giving another canonical string and arch_id
    with pytest.raises(ValueError, match="embed_dim: 384.0 is not allowed: expected a JSON integer"):
        ArchConfig("gpt-s", 384.0, 10, (4,) * 10, (2,) * 10, False)
    arch = ArchConfig.from_dict(GPT_S)
    assert type(arch.embed_dim) is int and arch.canonical.startswith("gpt-s|e384|l10|")


def test_right_type_out_of_space_keeps_the_choice_message():
    with pytest.raises(ValueError, match=r"^embed_dim: 100 is not allowed; allowed values: \[192, 384, 768\]$"):
        ArchConfig.from_dict({**GPT_S, "embed_dim": 100})
    with pytest.raises(ValueError, match=r"^n_head\[3\]: 5 is not allowed; allowed values: \[4, 8, 12\]$"):
        ArchConfig.from_dict({**GPT_S, "n_head": [4, 4, 4, 5, 4, 4, 4, 4, 4, 4]})


@pytest.mark.parametrize("value", [5, None, ["gpt-s"]])
def test_space_must_be_a_string(value):
    with pytest.raises(ValueError, match=r"^space: .* is not allowed: expected a JSON string, got .*gpt-nano"):
        ArchConfig.from_dict({**GPT_S, "space": value})


def test_unknown_fields_message_lists_the_allowed_fields():
    with pytest.raises(ValueError) as err:
        ArchConfig.from_dict({**GPT_S, "foo": 1, "Bias": True})
    assert str(err.value) == ("architecture: unknown fields ['Bias', 'foo']; allowed: space, embed_dim, n_layer, "
                              "n_head, mlp_ratio, bias, arch_id")
    with pytest.raises(ValueError, match="architecture: expected a JSON object"):
        ArchConfig.from_dict([("space", "gpt-s")])


@pytest.mark.parametrize("text", [
    "gpt-s|e384|l10|h4,4,4,4,4,4,4,4,4,4|m2,2,2,2,2,2,2,2,2,2|b2",
    "gpt-s|e384|l10|h4,4,4,4,4,4,4,4,4,4|m2,2,2,2,2,2,2,2,2,2|b-1",
    "gpt-s|e+384|l10|h4,4,4,4,4,4,4,4,4,4|m2,2,2,2,2,2,2,2,2,2|b0",
    "gpt-s|e3_84|l10|h4,4,4,4,4,4,4,4,4,4|m2,2,2,2,2,2,2,2,2,2|b0",
    "gpt-s|e 384|l10|h4,4,4,4,4,4,4,4,4,4|m2,2,2,2,2,2,2,2,2,2|b0",
    "gpt-s|e384|l10|h4,4,4,4,4,4,4,4,4,4,|m2,2,2,2,2,2,2,2,2,2|b0",
])
def test_from_canonical_is_strict(text):
    with pytest.raises(ValueError, match="canonical: cannot parse"):
        ArchConfig.from_canonical(text)


def test_from_canonical_keeps_the_choice_message():
    with pytest.raises(ValueError, match=r"embed_dim: 100 is not allowed; allowed values"):
        ArchConfig.from_canonical("gpt-s|e100|l10|h4,4,4,4,4,4,4,4,4,4|m2,2,2,2,2,2,2,2,2,2|b0")
    arch = ArchConfig.from_canonical("gpt-s|e384|l10|h4,4,4,4,4,4,4,4,4,4|m2,2,2,2,2,2,2,2,2,2|b0")
    assert arch == ArchConfig.from_dict(GPT_S)
