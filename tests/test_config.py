import pytest

from mlic.config import ConfigError, TrainConfig, apply_flat, apply_overrides, load_config, save_config


def test_defaults_are_the_seed_recipe():
    cfg = TrainConfig()
    assert (cfg.optim.optimizer, cfg.optim.lr, cfg.optim.batch_size, cfg.optim.epochs) == ("adam", 1e-3, 32, 10)
    assert (cfg.model.name, cfg.model.drop_rate, cfg.data.image_size, cfg.data.augment) == (
        "seed_cnn",
        0.5,
        224,
        "light",
    )


def test_yaml_round_trip(tmp_path):
    cfg = apply_flat(TrainConfig(), train="a.csv", epochs=3, lr=0.01, image_size=64)
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_unknown_keys_and_bad_types_are_named(tmp_path):
    (tmp_path / "bad.yaml").write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*optim.learning_rate"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "bad2.yaml").write_text("optim:\n  epochs: many\n")
    with pytest.raises(ConfigError, match=r"optim.epochs \(--epochs\): expected int"):
        load_config(tmp_path / "bad2.yaml")
    with pytest.raises(ConfigError, match="unknown key 'data.size'"):
        apply_overrides(TrainConfig(), ["data.size=3"])
    with pytest.raises(ConfigError, match="unknown option 'epoch'"):
        apply_flat(TrainConfig(), epoch=3)


def test_overrides_parse_values():
    cfg = apply_overrides(TrainConfig(), ["optim.lr=3e-4", "data.val=v.csv", "model.widths=[8, 16, 32, 64]"])
    assert cfg.optim.lr == 3e-4 and cfg.data.val == "v.csv" and cfg.model.widths == [8, 16, 32, 64]


def test_validate_rejects_bad_values():
    with pytest.raises(ConfigError, match="data.train is required"):
        TrainConfig().validate()
    with pytest.raises(ConfigError, match="epochs"):
        apply_flat(TrainConfig(), train="x.csv", epochs=0).validate()
