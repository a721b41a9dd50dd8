from pathlib import Path

import pytest

from labelsieve.config import ConfigError, Params, load_params, parse_params, preset_names

REPO = Path(__file__).resolve().parents[1]


def test_load_params_repo_file_is_valid():
    params = load_params(REPO / "params.yaml")
    assert params.ingest.source == "fashion-mnist"
    assert params.inject_noise.rate == 0.5


@pytest.mark.parametrize("name", preset_names())
def test_load_params_every_preset_is_valid(name):
    assert isinstance(load_params(REPO / "params.yaml", presets=[name]), Params)


def test_load_params_none_gives_defaults():
    assert load_params(None) == Params()


def test_parse_params_rate_out_of_range_names_key_value_and_range():
    with pytest.raises(ConfigError) as info:
        parse_params({"inject_noise": {"rate": 1.3}})
    assert info.value.problems == ["inject_noise.rate: 1.3 is outside [0, 1)"]


def test_parse_params_reports_every_problem_at_once():
    raw = {
        "inject_noise": {"rate": "high", "mode": "sometimes", "colour": 3},
        "data": {"image_size": 2, "channels": 2},
        "runtime": {"device": "tpu", "seed": True},
        "extra": {},
    }
    with pytest.raises(ConfigError) as info:
        parse_params(raw)
    problems = info.value.problems
    assert "inject_noise.rate: 'high' must be a number" in problems
    assert any(p.startswith("inject_noise.mode: 'sometimes' is not one of 'symmetric'") for p in problems)
    assert any(p.startswith("inject_noise.colour: unknown key; allowed: mode, rate") for p in problems)
    assert "data.image_size: 2 is outside [4, 1024]" in problems
    assert "data.channels: 2 is not one of 1, 3" in problems
    assert "runtime.device: 'tpu' does not match auto|cpu|cuda(:\\d+)?" in problems
    assert "runtime.seed: True must be an integer" in problems
    assert any(p.startswith("extra: unknown key") for p in problems)
    assert len(problems) == 8


def test_parse_params_int_accepted_where_float_expected():
    assert parse_params({"inject_noise": {"rate": 0}}).inject_noise.rate == 0.0


def test_parse_params_section_not_a_mapping_is_refused():
    with pytest.raises(ConfigError, match="ingest: expected a mapping, got 3"):
        parse_params({"ingest": 3})


def test_parse_params_list_and_dict_items_are_checked():
    with pytest.raises(ConfigError) as info:
        parse_params({"ingest": {"classes": ["a", 2]}, "inject_noise": {"custom_map": {"a": 1}}})
    assert info.value.problems == [
        "ingest.classes: ['a', 2] has an item 2 that must be a string",
        "inject_noise.custom_map: {'a': 1} has an entry 'a': 1 that is not str: str",
    ]


def test_load_params_override_goes_through_the_same_checks():
    params = load_params(None, overrides=["inject_noise.rate=0.2", "ingest.source=digits"])
    assert params.inject_noise.rate == 0.2
    assert params.ingest.source == "digits"
    with pytest.raises(ConfigError, match=r"inject_noise.rate: 1.3 is outside \[0, 1\)"):
        load_params(None, overrides=["inject_noise.rate=1.3"])


def test_load_params_malformed_override_is_refused():
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_params(None, overrides=["rate0.2"])


def test_load_params_preset_overlays_then_overrides_win(tmp_path):
    base = tmp_path / "params.yaml"
    base.write_text("ingest:\n  source: fashion-mnist\n  val_fraction: 0.1\n")
    params = load_params(base, presets=["digits"], overrides=["inject_noise.rate=0.1"])
    assert params.ingest.source == "digits"  # from the preset
    assert params.ingest.val_fraction == 0.1  # from the file, untouched by the preset
    assert params.inject_noise.rate == 0.1  # the override beats the preset's 0.4


def test_load_params_unknown_preset_lists_available():
    with pytest.raises(ConfigError, match="--preset 'nope': unknown preset; available: .*digits"):
        load_params(None, presets=["nope"])


def test_load_params_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="params file not found"):
        load_params(tmp_path / "absent.yaml")


def test_load_params_non_mapping_file_is_refused(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_params(bad)


def test_parse_params_checks_the_ingest_class_and_near_duplicate_keys():
    with pytest.raises(ConfigError) as info:
        parse_params({"ingest": {"min_class_size": 0, "near_duplicate_bits": 200, "strict_classes": "yes"}})
    assert info.value.problems == [
        "ingest.min_class_size: 0 is outside [1, inf)",
        "ingest.strict_classes: 'yes' must be true or false",
        "ingest.near_duplicate_bits: 200 is outside [-1, 195]",
    ]
    assert load_params(REPO / "params.yaml").ingest.strict_classes is False


def test_grip_schedule_continue_is_the_tail_of_the_model_schedule():
    from labelsieve.engine.loop import lr_at
    from labelsieve.stages.group_regularize import group_lr

    base = ["warmup.epochs=12", "ssl_train.epochs=0", "group_regularize.epochs=3", "group_regularize.lr=0.01"]
    own = load_params(None, overrides=base)
    tail = load_params(None, overrides=[*base, "group_regularize.schedule=continue"])
    assert own.total_epochs == 12 and tail.total_epochs == 15
    # one-cycle, peak 0.1, rising over the first 25%: at global epoch 13.5 of 15 (t = 0.9) the rate is
    # 0.1 * (1 - 0.9) / 0.75, by hand
    assert group_lr(1.5, tail) == pytest.approx(0.1 * 0.1 / 0.75)
    assert [group_lr(e, tail) for e in (0.0, 2.5)] == [lr_at(12 + e, tail.model, 15) for e in (0.0, 2.5)]
    # GRIP's own shape: cosine from the GRIP lr to 0 over its epochs (no lr warm-up by default)
    assert group_lr(0.0, own) == pytest.approx(0.01) and group_lr(1.5, own) == pytest.approx(0.005)
