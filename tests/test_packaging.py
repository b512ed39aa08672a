"""The two import packages coexist with transformers, and every shipped YAML parses."""

from __future__ import annotations

from pathlib import Path

import pytest

# configs/compare/ holds study configs of `compare`, not fit configs (tests/test_compare.py)
CONFIGS = sorted(
    p
    for p in (Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml")
    if p.parent.name != "compare"
)


def test_kernels_does_not_break_transformers():
    import transformers
    from transformers.utils import import_utils

    import kernels  # noqa: F401  (shares its name with Hugging Face's hub package `kernels`)

    assert not import_utils.is_kernels_available(), (
        "transformers must not mistake our `kernels` for the hub one"
    )
    config = transformers.LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    model = transformers.AutoModelForCausalLM.from_config(config)
    assert model(input_ids=__import__("torch").tensor([[1, 2, 3]])).logits.shape == (1, 3, 32)


def test_kernels_imports_without_lightning_rlhf():
    import subprocess
    import sys

    code = "import sys, kernels; assert not {'lightning_rlhf', 'lightning'} & set(sys.modules)"
    subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1]
    )


@pytest.mark.parametrize("config", CONFIGS, ids=[str(p.relative_to(p.parents[1])) for p in CONFIGS])
def test_every_config_parses(config, capsys):
    from lightning_rlhf.cli import RLHFCLI

    if config.parent.name == "trainer":  # overlays: parse on top of a full config
        args = [
            "fit",
            "--config",
            str(config.parents[1] / "sft" / "arithmetic.yaml"),
            "--config",
            str(config),
        ]
    else:
        args = ["fit", "--config", str(config)]
    with pytest.raises(SystemExit) as exit_info:
        RLHFCLI(args=[*args, "--print_config"])
    assert exit_info.value.code in (0, None), capsys.readouterr().err
    assert "class_path" in capsys.readouterr().out


def test_wrong_key_is_named(capsys):
    from lightning_rlhf.cli import RLHFCLI

    config = str(CONFIGS[0])
    with pytest.raises(SystemExit) as exit_info:
        RLHFCLI(args=["fit", "--config", config, "--model.init_args.learning_rate", "1"])
    assert exit_info.value.code == 2
    assert "learning_rate" in capsys.readouterr().err
