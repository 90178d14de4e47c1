"""Train a tiny GPT-2-architecture causal LM on the offline text, for the next-token diversity path.

No GPT-2 weights ship in any package these machines can install, so the causal-LM path of
`hf_task2vec.diversity` is exercised on this model instead: the GPT-2 architecture
(`transformers.GPT2LMHeadModel`, learned positions, tied embeddings) at a toy size, with a byte-level
BPE tokenizer trained here, both trained from scratch on the offline corpora (fortunes, WordNet
glosses, SpamAssassin mail). It is a stand-in that makes the code path real, not a substitute for
GPT-2: its diversity values are not comparable with the paper's.

    python benchmarks/train_tiny_gpt2.py --out benchmarks/cache/tiny-gpt2 --steps 400

The folder it writes loads with ``hf_task2vec.load_probe(folder)`` (a causal-LM text probe).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger("train_tiny_gpt2")

EOS = "<|endoftext|>"


def corpus(max_per_source: int = 4000, seed: int = 0) -> list[str]:
    """Training texts: train splits of fortunes, WordNet glosses and SpamAssassin (shuffled, capped)."""
    from hf_task2vec.data import load_offline

    rng = np.random.default_rng(seed)
    texts: list[str] = []
    for name in ("fortunes", "wordnet", "spamassassin"):
        col = load_offline(name, "train").data.column("text").to_pylist()
        idx = rng.permutation(len(col))[:max_per_source]
        texts.extend(col[i] for i in idx)
    order = rng.permutation(len(texts))
    return [texts[i] for i in order]


def train(
    out: str | Path,
    *,
    steps: int = 400,
    vocab_size: int = 2048,
    n_embd: int = 64,
    n_layer: int = 2,
    n_head: int = 4,
    context: int = 64,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    max_per_source: int = 4000,
) -> Path:
    """Train tokenizer + model and save both to ``out`` (``save_pretrained``); returns the folder."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    out = Path(out)
    texts = [t[:400] for t in corpus(max_per_source, seed)]  # mail bodies are long: keep the mix balanced
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS], show_progress=False)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, eos_token=EOS, bos_token=EOS, unk_token=EOS, pad_token=EOS,
        model_max_length=context,
    )
    ids: list[int] = []
    for row in bpe.encode_batch(texts):
        ids.extend([*row.ids, tokenizer.eos_token_id])
    stream = torch.tensor(ids, dtype=torch.long)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=context, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
    )
    model = GPT2LMHeadModel(config)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    started = time.perf_counter()
    losses = []
    for step in range(steps):
        starts = torch.randint(0, stream.numel() - context - 1, (batch_size,), generator=gen)
        batch = torch.stack([stream[s : s + context] for s in starts])
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 100 == 0:
            logger.info("step %d loss %.3f", step, losses[-1])
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    info = {
        "what": "tiny GPT-2-architecture LM trained from scratch on offline text (not GPT-2's weights)",
        "steps": steps,
        "tokens_in_corpus": int(stream.numel()),
        "first_loss": losses[0],
        "final_loss_mean_last_20": float(np.mean(losses[-20:])),
        "seconds": round(time.perf_counter() - started, 1),
        "config": {"n_embd": n_embd, "n_layer": n_layer, "n_head": n_head, "context": context, "vocab": len(tokenizer)},
    }
    (out / "training_info.json").write_text(json.dumps(info, indent=2))
    return out


def cached(steps: int = 400, seed: int = 0, **options: object) -> Path:
    """The trained folder for these options under ``$HF_TASK2VEC_CACHE`` (default ``~/.cache/hf_task2vec``),
    trained on first use; keyed by the options and this script's bytes."""
    import hashlib
    import os
    import shutil
    import tempfile

    key = hashlib.sha256(
        Path(__file__).read_bytes() + json.dumps([steps, seed, sorted(options.items())], default=str).encode()
    ).hexdigest()[:12]
    base = Path(os.environ.get("HF_TASK2VEC_CACHE") or Path.home() / ".cache" / "hf_task2vec")
    folder = base / f"tiny-gpt2-{key}"
    if (folder / "training_info.json").is_file():
        return folder
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-gpt2-", dir=base))
    try:
        train(tmp, steps=steps, seed=seed, **options)  # type: ignore[arg-type]
        try:
            os.rename(tmp, folder)
        except OSError:  # another process finished first: keep theirs
            if not (folder / "training_info.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/cache/tiny-gpt2")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    folder = train(args.out, steps=args.steps, seed=args.seed)
    print(json.loads((folder / "training_info.json").read_text()))


if __name__ == "__main__":
    main()
