"""Every bad input named in issue 6 gets a one-line error that says what and where."""

from __future__ import annotations

import json

import pytest
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

from lightning_rlhf.data import RLHFDataModule
from lightning_rlhf.data.formats import DataError
from lightning_rlhf.models import ModelConfig, load_causal_lm
from lightning_rlhf.strategies import UnsupportedStrategyError, check_strategy
from tests.algorithms.e2e import CONFIGS, TINY, run_fit, tiny_policy

ARITHMETIC_REWARD = "lightning_rlhf.data.tasks.arithmetic:reward"
CLIP_RANGE = "need 0 <= clip_low < 1 and clip_high >= 0"  # the online clip-range check


def _setup(path, format: str = "response", **kw) -> RLHFDataModule:
    data = RLHFDataModule(dataset=str(path), format=format, val_split=0, **kw)
    data.setup("fit")
    return data


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message, f"error is not one line: {message!r}"
    return message


def cli_error(capsys, config: str, root, *extra: str) -> str:
    """Run ``fit`` of ``configs/<config>`` (or a config file path; tiny policy, one step) through
    the real entry point; asserts exit code 2, no usage screen, and returns the one error line."""
    from lightning_rlhf.cli import main

    args = ["fit", "--config", str(CONFIGS / config), "--trainer.default_root_dir", str(root)]
    args += ["--trainer.max_steps=1", "--trainer.enable_progress_bar", "false"]
    args += ["--data.num_train", "16", "--data.num_val", "8", *tiny_policy(), *extra]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error")]
    assert len(lines) == 1 and "usage:" not in err and "Traceback" not in err, err
    return lines[0]


def _jsonl(path, rows) -> str:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_malformed_jsonl_line(tmp_path):
    path = _jsonl(tmp_path / "bad.jsonl", [{"prompt": "1+1=", "response": "2"}, "{not json"])
    with pytest.raises(DataError) as err:
        _setup(path)
    assert "bad.jsonl" in _one_line(err)


def test_missing_columns(tmp_path):
    path = _jsonl(tmp_path / "cols.jsonl", [{"prompt": "1+1=", "answer": "2"}])
    with pytest.raises(DataError) as err:
        _setup(path)
    message = _one_line(err)
    assert "cols.jsonl" in message and "response" in message


@pytest.mark.parametrize("field", ["prompt", "response"])
def test_empty_prompt_or_response(tmp_path, field):
    row = {"prompt": "1+1=", "response": "2", field: ""}
    path = _jsonl(tmp_path / "empty.jsonl", [{"prompt": "2+2=", "response": "4"}, row])
    with pytest.raises(DataError) as err:
        _setup(path)
    message = _one_line(err)
    assert "empty.jsonl" in message and field in message


@pytest.mark.parametrize("value", ["NaN", "Infinity"])
def test_nonfinite_rewards(tmp_path, value):
    path = tmp_path / "rewards.jsonl"
    path.write_text(f'{{"prompt": "1+1=", "response": "2", "reward": {value}}}\n')
    with pytest.raises(DataError) as err:
        _setup(path)
    message = _one_line(err)
    assert "rewards.jsonl" in message and "reward" in message


def test_sequences_past_the_models_context(tmp_path):
    with pytest.raises(ValueError) as err:
        run_fit("sft/arithmetic.yaml", tmp_path, *tiny_policy(), "--data.max_prompt_length", "64")
    assert "exceeds the model's context of 64 tokens" in _one_line(err)


def test_tokenizer_without_pad_token(monkeypatch):
    """No pad token: padding falls back to EOS; neither pad nor EOS: a one-line error."""
    import lightning_rlhf.data.tasks as tasks

    original = tasks.get_tokenizer

    def stripped(name, drop=("pad_token",)):
        tok = original(name)
        for attr in drop:
            setattr(tok, attr, None)
        return tok

    monkeypatch.setattr(tasks, "get_tokenizer", stripped)
    tok = RLHFDataModule(tokenizer="builtin:arithmetic").tokenizer
    assert tok.pad_token_id == tok.eos_token_id is not None
    monkeypatch.setattr(tasks, "get_tokenizer", lambda n: stripped(n, ("pad_token", "eos_token")))
    with pytest.raises(DataError) as err:
        RLHFDataModule(tokenizer="builtin:arithmetic").tokenizer  # noqa: B018
    assert "'builtin:arithmetic' has neither a pad nor an EOS token" in _one_line(err)


def test_missing_model_path(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError) as err:
        load_causal_lm(ModelConfig(name_or_path=str(missing)), RLHFDataModule().tokenizer)
    assert str(missing) in _one_line(err)


def test_unknown_config_key(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_fit("sft/arithmetic.yaml", tmp_path, "--model.init_args.learning_rate", "1")
    assert exit_info.value.code == 2
    assert "learning_rate" in capsys.readouterr().err


def test_algorithm_given_the_wrong_data_format(tmp_path):
    with pytest.raises(ValueError) as err:
        run_fit("dpo/arithmetic.yaml", tmp_path, *tiny_policy(), "--data.format", "prompt")
    assert "DPO needs data.format='pair' but the data module has format='prompt'" in (
        _one_line(err)
    )


def test_strategy_the_algorithm_cannot_use():
    from lightning_rlhf.algorithms.p3o import P3O
    from lightning_rlhf.algorithms.sft import SFT

    online = P3O(ModelConfig(config=TINY), reward=ARITHMETIC_REWARD)
    with pytest.raises(UnsupportedStrategyError) as err:
        check_strategy(online, FSDPStrategy())
    message = _one_line(err)
    assert "P3O cannot run under trainer.strategy=FSDPStrategy" in message
    assert "manual optimisation" in message and "fsdp2" in message
    check_strategy(online, DDPStrategy())  # supported: no error
    check_strategy(SFT(ModelConfig(config=TINY)), FSDPStrategy())


def test_ppo_and_mappo_run_under_fsdp2_and_refuse_fsdp1():
    """Their critic is sharded under FSDP2 (tests/distributed/test_fsdp2.py runs them); FSDP1
    stays refused like every manual-optimisation algorithm."""
    from lightning_rlhf.algorithms.ppo import MAPPO, PPO
    from lightning_rlhf.strategies import FSDP2Strategy

    for cls in (PPO, MAPPO):
        module = cls(ModelConfig(config=TINY), reward=ARITHMETIC_REWARD)
        check_strategy(module, FSDP2Strategy())
        check_strategy(module, DDPStrategy())
        with pytest.raises(UnsupportedStrategyError) as err:
            check_strategy(module, FSDPStrategy())
        assert f"{cls.__name__} cannot run under trainer.strategy=FSDPStrategy" in _one_line(err)


def test_online_generation_past_the_models_context(tmp_path):
    from tests.algorithms.e2e import run_fit, tiny_policy

    too_long = ["--model.init_args.max_new_tokens", "60", "--data.num_val", "8"]
    with pytest.raises(ValueError, match=r"max_new_tokens = 76 exceeds the model's context of 64"):
        run_fit("rloo/arithmetic.yaml", tmp_path, *tiny_policy(), *too_long, steps=1)


def test_scorer_that_cannot_be_loaded_through_the_cli(tmp_path, capsys):
    """Used to end in "'GRPO' object has no attribute 'reward_fn'": the AttributeError raised
    while loading the scorer inside the ``reward_fn`` property made Python fall back to
    ``nn.Module.__getattr__``; reward errors are now a ValueError naming the spec."""
    reward = "lightning_rlhf.data.tasks.arithmetic:nope"
    line = cli_error(capsys, "grpo/arithmetic.yaml", tmp_path, "--model.init_args.reward", reward)
    assert line == (
        f"error: RewardError: reward spec {reward!r}: module "
        "'lightning_rlhf.data.tasks.arithmetic' has no 'nope'"
    )


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("max_new_tokens", "0", "GRPO: max_new_tokens must be >= 1, got 0"),
        ("samples_per_prompt", "0", "GRPO: samples_per_prompt must be >= 2, got 0"),
        ("grad_accum", "0", "GRPO: grad_accum must be >= 1, got 0"),
        ("temperature", "-1", "GRPO: temperature must be > 0, got -1.0"),
        ("kl_beta", "-0.1", "GRPO: kl_beta must be >= 0, got -0.1"),
        ("top_p", "1.5", "GRPO: top_p must be in (0, 1], got 1.5"),
        ("clip_eps", "1.5", f"GRPO: {CLIP_RANGE}, got clip_low=1.5, clip_high=1.5"),
        ("lr", "0", "GRPO: lr must be > 0, got 0.0"),
        ("betas", "[0.9, 1.0]", "GRPO: betas[1] must be in [0, 1), got 1.0"),
    ],
)
def test_init_checks_reach_the_cli_as_their_own_line(tmp_path, capsys, option, value, message):
    """jsonargparse reported a failing __init__ check of a class_path model as "Does not
    validate against any of the Union subtypes"; the CLI now prints the check's own line."""
    line = cli_error(capsys, "grpo/arithmetic.yaml", tmp_path, f"--model.init_args.{option}", value)
    assert line == f"error: ValueError: {message}"


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("ppo.PPO", {"clip_eps": 0.0}, "PPO: clip_eps must be in (0, 1), got 0.0"),
        ("ppo.PPO", {"lam": 1.5}, "PPO: lam must be in [0, 1], got 1.5"),
        ("ppo.PPO", {"vf_coef": -1.0}, "PPO: vf_coef must be >= 0, got -1.0"),
        ("ppo.MAPPO", {"n": 0}, "MAPPO: n must be >= 1, got 0"),
        ("critic_free.RLOO", {"clip_eps": 1.0},
         f"RLOO: {CLIP_RANGE}, got clip_low=1.0, clip_high=1.0"),
        ("p3o.P3O", {"weight_cap": 0.5}, "P3O: weight_cap must be >= 1, got 0.5"),
        ("p3o.P3O", {"reward_clip": 0.0}, "P3O: reward_clip must be > 0, got 0.0"),
        ("dpo.DPO", {"beta": 0.0}, "DPO: beta must be > 0, got 0.0"),
        ("alol.ALoL", {"gold_floor": 2.0}, "ALoL: gold_floor must be in [0, 1], got 2.0"),
        ("pro.PRO", {"sft_weight": -1.0}, "PRO: sft_weight must be >= 0, got -1.0"),
        ("sft.SFT", {"max_nonfinite_steps": 0}, "SFT: max_nonfinite_steps must be >= 1, got 0"),
        ("sft.SFT", {"lr": float("nan")}, "SFT: lr must be > 0, got nan"),
    ],
)
def test_every_algorithm_range_checks_its_hyperparameters(name, kwargs, message):
    import importlib

    module, cls = name.split(".")
    algorithm = getattr(importlib.import_module(f"lightning_rlhf.algorithms.{module}"), cls)
    if module in ("ppo", "critic_free", "p3o", "alol"):  # they score with a required reward
        kwargs = {"reward": ARITHMETIC_REWARD, **kwargs}
    with pytest.raises(ValueError) as err:
        algorithm(ModelConfig(config=TINY), **kwargs)
    assert _one_line(err) == message


def test_dpo_beta_through_the_cli(tmp_path, capsys):
    """The unwrapped message works for every algorithm, not only the online ones."""
    line = cli_error(capsys, "dpo/arithmetic.yaml", tmp_path, "--model.init_args.beta", "0")
    assert line == "error: ValueError: DPO: beta must be > 0, got 0.0"


def _config_with(tmp_path, old: str, new: str) -> str:
    """configs/grpo/arithmetic.yaml with ``old`` replaced by ``new``, written under tmp_path."""
    text = (CONFIGS / "grpo" / "arithmetic.yaml").read_text()
    assert old in text
    path = tmp_path / "typo.yaml"
    path.write_text(text.replace(old, new))
    return str(path)


@pytest.mark.parametrize(
    "old, new, message",
    [
        (
            "max_new_tokens: 6",
            "max_new_tokenz: 6",
            "model.init_args.max_new_tokenz (in {path}): not a known option; "
            "did you mean 'model.init_args.max_new_tokens'?",
        ),
        (
            "  batch_size: 16",
            "  batch_sise: 16",
            "data.batch_sise (in {path}): not a known option; did you mean 'data.batch_size'?",
        ),
        (
            "  max_steps: 25",
            "  max_stepz: 25",
            "trainer.max_stepz (in {path}): not a known option; did you mean 'trainer.max_steps'?",
        ),
        (
            "max_new_tokens: 6",
            "max_new_tokens: six",
            "model.init_args.max_new_tokens (in {path}): Expected a <class 'int'>. Got value: six",
        ),
        (
            "policy: {name_or_path: runs/sft/export}",
            "policy: {name_or_path: runs/sft/export",
            "{path}: not valid YAML: expected ',' or '}}', but got ':' (line 26, column 11)",
        ),
    ],
)
def test_bad_yaml_key_or_value_names_the_file(tmp_path, capsys, monkeypatch, old, new, message):
    """A typo'd key, a wrong type or broken YAML in a config file: one line naming the key and
    the file (a misspelt key gets the closest accepted one), not a usage screen."""
    monkeypatch.delenv("LIGHTNING_RLHF_DEBUG", raising=False)
    path = _config_with(tmp_path, old, new)
    line = cli_error(capsys, path, tmp_path)
    assert line == "error: ConfigError: " + message.format(path=path)


@pytest.mark.parametrize(
    "flag, message",
    [
        (
            "--model.init_args.policy.nme_or_path=x",
            "model.init_args.policy.nme_or_path (command line): not a known option; "
            "did you mean 'model.init_args.policy.name_or_path'?",
        ),
        (
            "--data.format=pairs",
            "data.format (command line): Expected a typing.Literal['prompt', 'response', 'pair', "
            "'ranked']. Got value: pairs",
        ),
        (
            "--model.class_path=lightning_rlhf.algorithms.GRPOO",
            "model.class_path (command line): module 'lightning_rlhf.algorithms' has no "
            "attribute 'GRPOO'",
        ),
    ],
)
def test_bad_command_line_key_or_value(tmp_path, capsys, monkeypatch, flag, message):
    monkeypatch.delenv("LIGHTNING_RLHF_DEBUG", raising=False)
    line = cli_error(capsys, "grpo/arithmetic.yaml", tmp_path, flag)
    assert line == "error: ConfigError: " + message


def test_trainer_setting_lightning_refuses(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LIGHTNING_RLHF_DEBUG", raising=False)
    line = cli_error(capsys, "grpo/arithmetic.yaml", tmp_path, "--trainer.max_steps=-5")
    assert line.startswith("error: MisconfigurationException: `max_steps` must be a non-negative")


def test_help_is_not_an_error(capsys):
    """The one-line parser changes errors only: --help still prints the options and exits 0."""
    from lightning_rlhf.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    assert "[--model CONFIG | CLASS_PATH_OR_NAME | .INIT_ARG_NAME VALUE]" in capsys.readouterr().out
