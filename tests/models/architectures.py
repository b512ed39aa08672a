"""Tiny random configs (hidden 32, 2 layers) of the architectures users bring, for the matrix test.

Each head transform is set far from 1 so that a path that ignored it would be visibly wrong.
"""

from __future__ import annotations

BASE = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 64}
GEMMA = {**BASE, "head_dim": 16, "sliding_window": 16, "query_pre_attn_scalar": 16,
         "layer_types": ["sliding_attention", "full_attention"]}

ARCHITECTURES: dict[str, dict] = {
    "gpt2": {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 2, "n_inner": 64,
             "n_positions": 64},
    "qwen2_tied": {"model_type": "qwen2", **BASE, "tie_word_embeddings": True},
    "qwen3": {"model_type": "qwen3", **BASE, "head_dim": 16},
    "gemma2": {"model_type": "gemma2", **GEMMA, "final_logit_softcapping": 0.1},
    "gemma3_text": {"model_type": "gemma3_text", **GEMMA, "final_logit_softcapping": 0.1},
    "phi3": {"model_type": "phi3", **BASE},
    "mistral": {"model_type": "mistral", **BASE, "sliding_window": 16},
    "gpt_neox": {"model_type": "gpt_neox", **BASE},
    "opt_proj": {"model_type": "opt", "hidden_size": 32, "word_embed_proj_dim": 16,
                 "ffn_dim": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                 "max_position_embeddings": 64, "do_layer_norm_before": False},
    "olmo2": {"model_type": "olmo2", **BASE},
    "granite": {"model_type": "granite", **BASE, "logits_scaling": 0.25},
    "cohere": {"model_type": "cohere", **BASE, "logit_scale": 4.0},
    "falcon": {"model_type": "falcon", "hidden_size": 32, "num_hidden_layers": 2,
               "num_attention_heads": 2, "ffn_hidden_size": 64, "max_position_embeddings": 64},
    "falcon_h1": {"model_type": "falcon_h1", **BASE, "head_dim": 16, "mamba_d_ssm": 32,
                  "mamba_n_heads": 4, "mamba_d_head": 8, "mamba_d_state": 8,
                  "mamba_chunk_size": 16, "lm_head_multiplier": 3.0},
    "recurrent_gemma": {"model_type": "recurrent_gemma", "hidden_size": 32,
                        "intermediate_size": 64, "num_hidden_layers": 2,
                        "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 16,
                        "lru_width": 32, "attention_window_size": 16,
                        "block_types": ["recurrent", "attention"], "logits_soft_cap": 0.1},
    "llama_no_pad": {"model_type": "llama", **BASE},  # saved without a pad token, loaded by path
}
