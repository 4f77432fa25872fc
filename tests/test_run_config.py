"""The typed run config: YAML round trips, CLI defaults = the shipped paper file, override
precedence, refusals naming file, line and key path, overrides and diffs; each setting defined
once (its field makes its option, help, resume and protocol rules)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest
from click.testing import CliRunner

from clifvqa._device import default_workers
from clifvqa.cli import main
from clifvqa.cli_options import SettingsCommand, setting_help
from clifvqa.config_io import ConfigError, diff, dump_yaml, from_data, parse_yaml, to_data, with_overrides
from clifvqa.train import trainer
from clifvqa.train.config import (
    PAPER_CONFIG,
    PROTOCOL_KEYS,
    RESUMABLE_CHANGES,
    OptimConfig,
    RunConfig,
    load_run_config,
    option_settings,
    set_options,
    settings,
    tiny,
)
from clifvqa.train.fastvqa import VARIANTS, FastVQAConfig
from clifvqa.train.fragments import FragmentConfig
from clifvqa.train.model import TINY_FRAGMENTS, ClifVQAConfig


def print_config(*args: str) -> str:
    result = CliRunner().invoke(main, ["train", "--print-config", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_shipped_paper_file_is_the_default_tree_and_round_trips_identically():
    text = PAPER_CONFIG.read_text(encoding="utf-8")
    # the file is generated from RunConfig's fields, the one definition of each setting
    assert dump_yaml(RunConfig()) == text, "configs/clifvqa-b.yaml is older than train/config.py: run `make configs`"
    config = load_run_config(PAPER_CONFIG)
    assert config == RunConfig()
    assert dump_yaml(config) == text  # file -> tree -> file
    assert print_config() == text  # `clifvqa train` without --config resolves to exactly that file
    assert config.optim.lr == 7.5e-4 and config.optim.backbone_lr == 7.5e-5 and config.optim.batch_size == 12
    assert config.model.fastvqa == VARIANTS["fast-b"] and config.model.fragments == FragmentConfig()


def test_round_trip_of_a_changed_tree(tmp_path):
    config = set_options(tiny(RunConfig()), branches="semantic", lr=1e-5, stores=["a.zarr", "b b.zarr"],
                         grad_clip=0.5, manifest="data/m.csv", splits=3)
    text = dump_yaml(config)
    assert "lr: 1.0e-05" in text  # a YAML 1.1 float (1e-05 would read back as a string)
    assert 'stores: [a.zarr, "b b.zarr"]' in text
    (tmp_path / "run.yaml").write_text(text)
    again = load_run_config(tmp_path / "run.yaml")
    assert again == config and dump_yaml(again) == text
    assert isinstance(again.model.fastvqa, FastVQAConfig) and again.model.fragments.size_h == 128


def test_cli_flags_override_the_file_and_tiny_sets_the_tree(tmp_path):
    (tmp_path / "run.yaml").write_text("optim:\n  epochs: 5\n  lr: 1e-4\nmodel:\n  branches: semantic\nseed: 3\n")
    config = from_data(RunConfig, parse_yaml(print_config("--config", str(tmp_path / "run.yaml"))).data)
    assert (config.optim.epochs, config.optim.lr, config.model.branches, config.seed) == (5, 1e-4, "semantic", 3)
    assert config.optim.batch_size == 12  # not in the file: the paper's

    out = print_config("--config", str(tmp_path / "run.yaml"), "--epochs", "7", "--branches", "both",
                       "--no-amp", "--tiny", "--num-clips-test", "2")
    config = from_data(RunConfig, parse_yaml(out).data)
    assert (config.optim.epochs, config.optim.lr, config.model.branches, config.optim.amp) == (7, 1e-4, "both", False)
    assert config.model == replace(tiny(RunConfig()).model, fragments=replace(TINY_FRAGMENTS, num_clips_test=2))
    assert config.seed == 3 and config.model.t0 == 16


@pytest.mark.parametrize(("yaml_text", "message"), [
    ("model:\n  fastvqa:\n    embed_dim: 96\n    window_size: [8, 7]\n",
     "run.yaml:4: model.fastvqa.window_size: expected 3 integers, got [8, 7]"),
    ("seed: 1\noptim:\n  epoch: 3\n",
     "run.yaml:3: optim.epoch: unknown OptimConfig fields ['epoch'] (known: epochs, batch_size,"),
    ("optim:\n  epochs: three\n", "run.yaml:2: optim.epochs: expected an integer, got 'three'"),
    ("model:\n  branches: all\n",
     "run.yaml:2: model.branches: expected one of \"both\", \"semantic\", \"spatial\", got 'all'"),
    ("data:\n  val_fraction: 1.5\n", "run.yaml:1: data: val_fraction must be in [0, 1)"),
    ("optim: 3\n", "run.yaml:1: optim: expected a section (OptimConfig: keys epochs,"),
    ("optim:\n  grad_clip: yes please\n", "run.yaml:2: optim.grad_clip: expected a number or null, got 'yes please'"),
    ("optim: [\n", "run.yaml:2: not valid YAML"),
    ("optim:\n  epochs: 3\n  batch_size: 2\n  epochs: 5\n",
     "run.yaml:4: optim.epochs: written twice (lines 2 and 4); keep one of them"),
])
def test_refusals_name_file_line_and_key_path(tmp_path, yaml_text, message):
    path = tmp_path / "run.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_run_config(path)
    assert str(info.value).startswith(f"{path.parent}/{message}")
    result = CliRunner().invoke(main, ["train", "--config", str(path), "--print-config"])
    assert result.exit_code == 2 and result.output.startswith(f"error: {path.parent}/{message}")
    assert result.output.count("\n") == 1  # one line, no traceback


def test_resume_reads_the_run_folders_config(tmp_path):
    saved = set_options(tiny(RunConfig()), epochs=4, branches="semantic", manifest="m.csv")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.yaml").write_text(dump_yaml(saved))
    shown = from_data(RunConfig, parse_yaml(print_config("--resume", "--out", str(tmp_path / "run"))).data)
    assert shown == saved
    shown = from_data(RunConfig, parse_yaml(print_config("--resume", "--out", str(tmp_path / "run"), "--workers", "2"))
                      .data)
    assert shown == replace(saved, workers=2)


def test_lines_of_nested_lists_for_other_files():
    doc = parse_yaml("name: x\nstages:\n  - name: pre\n    config:\n      optim:\n        epochs: 3\n  - name: ft\n",
                     "exp.yaml")
    assert doc.lines["stages[1]"] == 7 and doc.lines["stages[0].config.optim.epochs"] == 6
    assert doc.where("stages[0].config.optim.epochs") == "exp.yaml:6"
    assert doc.where("stages[1].config.seed") == "exp.yaml:7"  # not written: its nearest enclosing key
    with pytest.raises(ConfigError, match=r"^exp.yaml:6: stages\[0\].config.optim.epochs: expected an integer"):
        from_data(RunConfig, {"optim": {"epochs": "3"}}, doc=doc, key_path="stages[0].config")


def test_overrides_and_diff():
    base = RunConfig()
    changed = with_overrides(base, {"optim.epochs": 3, "model.branches": "semantic",
                                    "model.fastvqa.window_size": (4, 4, 4)})
    assert diff(base, changed) == {
        "model.branches": ("both", "semantic"),
        "model.fastvqa.window_size": ([8, 7, 7], [4, 4, 4]),
        "optim.epochs": (30, 3),
    }
    assert diff(changed, changed) == {}
    with pytest.raises(ConfigError, match=r"^optim.epoch: unknown key; known here: epochs, batch_size"):
        with_overrides(base, {"optim.epoch": 3})
    with pytest.raises(ConfigError, match=r"^optim.epochs.x: optim.epochs is a setting, not a section"):
        with_overrides(base, {"optim.epochs.x": 3})
    with pytest.raises(ConfigError, match=r"^optimiser.lr: unknown key optimiser; known here: data, model, optim,"):
        with_overrides(base, {"optimiser.lr": 3})
    with pytest.raises(ConfigError, match=r"^model.fastvqa.window_size: expected 3 integers, got \[4, 4\]"):
        with_overrides(base, {"model.fastvqa.window_size": [4, 4]})


def test_model_configs_of_old_checkpoints_with_mappings_still_load():
    config = ClifVQAConfig(r=2, fastvqa=VARIANTS["tiny"].to_dict(), fragments=TINY_FRAGMENTS.to_dict())
    assert config.fastvqa == VARIANTS["tiny"] and config.fragments == TINY_FRAGMENTS
    data = to_data(config)
    assert ClifVQAConfig.from_dict(data) == config and ClifVQAConfig.of(config.model, 2) == config


# ------------------------------------------------------------------------- one definition per setting

ARCHITECTURE = ("model.t0", "model.semantic_hidden", "model.head_hidden", "model.fastvqa.", "model.fragments.")
"""The leaves --tiny sets: config-file only (no option), except the test clips."""


def comments(yaml_text: str) -> dict[str, str]:
    """The comment of every leaf key of ``dump_yaml`` text, by dotted key path."""
    out, path = {}, []
    for line in yaml_text.splitlines():
        if line.startswith("#"):
            continue
        depth = (len(line) - len(line.lstrip())) // 2
        key, _, rest = line.strip().partition(":")
        path[depth:] = [key]
        value, _, comment = rest.partition("  # ")
        if value.strip():
            out[".".join(path)] = comment
    return out


def test_every_setting_has_one_option_with_its_fields_help():
    command = main.commands["train"]
    options = [p for p in command.params if not p.hidden]
    for setting in settings():
        if setting.key.startswith(ARCHITECTURE) and setting.key != "model.fragments.num_clips_test":
            assert not setting.option, setting.key
            continue
        made = [p for p in options if p.name == setting.name]
        assert len(made) == 1 and made[0].opts == list(setting.option), setting.key
        assert made[0].help == setting_help(setting) and setting.help, setting.key
    names = [p.name for p in options]
    assert len(names) == len(set(names))
    assert {s.name for s in option_settings()} == set(names) - {"config_path", "print_config", "out", "resume",
                                                                  "tiny", "quiet", "help"}


def test_print_config_and_help_agree():
    shown = comments(print_config())
    text = "".join(CliRunner().invoke(main, ["train", "--help"]).output.split())
    for setting in option_settings():
        assert shown[setting.key] == setting.help, setting.key
        assert "".join(setting_help(setting).split()) in text, setting.key


def test_resume_and_protocol_rules_come_from_the_fields():
    assert set(RESUMABLE_CHANGES) == {"device", "workers", "optim.grad_checkpoint"}
    assert set(PROTOCOL_KEYS) == {"data.manifest", "data.videos", "data.stores", "data.test_manifest",
                                  "data.splits", "data.test_fraction", "data.val_fraction"}
    help_text = " ".join(CliRunner().invoke(main, ["train", "--help"]).output.split())
    assert help_text.count("may change on resume]") == len(RESUMABLE_CHANGES)


@dataclass(frozen=True)
class _Optim(OptimConfig):
    ema: float | None = field(default=None, metadata={"help": "decay of a moving average of the weights",
                                                      "option": "--ema", "resumable": True})


@dataclass(frozen=True)
class _Run(RunConfig):
    optim: _Optim = field(default_factory=_Optim)


def test_a_new_field_is_a_new_setting_everywhere():
    got = {}
    command = SettingsCommand("train", callback=lambda **kw: got.update(kw), settings=lambda: option_settings(_Run))
    result = CliRunner().invoke(command, ["--ema", "0.9", "--epochs", "2"])
    assert result.exit_code == 0, result.output
    config = set_options(_Run(), **got)
    assert (config.optim.ema, config.optim.epochs) == (0.9, 2)
    help_text = " ".join(CliRunner().invoke(command, ["--help"]).output.split())
    assert "--ema FLOAT decay of a moving average of the weights [optim.ema; may change on resume]" in help_text
    assert "  ema: 0.9  # decay of a moving average of the weights" in config.to_yaml()
    assert [s.key for s in settings(_Run) if s.resumable] == ["optim.grad_checkpoint", "optim.ema", "device",
                                                               "workers"]


def test_old_option_spellings_work_with_one_warning():
    result = CliRunner().invoke(main, ["train", "--print-config", "--fastvqa-init", __file__,
                                       "--swin-k400-init", __file__])
    assert result.exit_code == 0, result.output
    assert result.stderr == ("warning: --fastvqa-init is deprecated, use --init-fastvqa\n"
                             "warning: --swin-k400-init is deprecated, use --init-swin-k400\n")
    shown = from_data(RunConfig, parse_yaml(result.stdout).data)
    assert shown.init.fastvqa == shown.init.swin_k400 == __file__
    for old, new, error in [("--workers", "--threads", "0 is not in the range x>=1."),
                            ("--batch-size", "--batch-crops", "'0' is not a positive integer or auto")]:
        result = CliRunner().invoke(main, ["extract", ".", old, "0"])  # converted by the new option
        assert result.exit_code == 2
        assert result.stderr == (f"warning: {old} is deprecated, use {new}\n"
                                 f"error: Invalid value for '{new}': {error} (see: clifvqa extract --help)\n")


def test_default_workers_follow_the_machine(monkeypatch):
    for cores, processes, threads in ((1, 0, 1), (2, 1, 1), (3, 2, 2), (64, 4, 8)):
        monkeypatch.setattr("os.sched_getaffinity", lambda pid, n=cores: set(range(n)), raising=False)
        assert (default_workers("processes"), default_workers("threads")) == (processes, threads)
        assert trainer.resolve_workers(RunConfig()) == processes
    for command in ("train", "evaluate"):  # one --workers: DataLoader processes, one default
        help_text = " ".join(CliRunner().invoke(main, [command, "--help"]).output.split())
        assert "--workers INTEGER RANGE DataLoader processes decoding videos; null (not given): min(4, usable cores " \
            "- 1)" in help_text and "[x>=0]" in help_text
