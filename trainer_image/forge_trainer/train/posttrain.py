"""What sft and rl share: the base model and its tokenizer, adapters by method, the final export with
the chat template, and the SIGTERM flag.

Base: `initModel`, a Hugging Face–format directory (a ForgeTrainingRun's final model, resolved to its
URI by the operator, or any open-weights model), built on the meta device and loaded as continued
pretraining loads it (`base_model`: each worker reads only its shard; QLoRA reads each quantized weight
whole, one at a time); its tokenizer.json is the tokenizer (the dataset's when the directory has none).
The export goes to `<output>/model/` (adapters merged when `lora.merge`, else the
base) and, for lora/qlora, the PEFT adapter to `<output>/adapter/`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import Tokenizer
from torch import Tensor, nn

from forge_trainer.config import SftMethod, TrainConfig, TrainProgress
from forge_trainer.config.store import ADAPTER_DIR, MODEL_DIR
from forge_trainer.data.shards import fetch_tokenizer
from forge_trainer.data.tokenizer import special_token_ids
from forge_trainer.errors import ConfigError, WorkloadError
from forge_trainer.model.args import ModelArgs, with_vocab
from forge_trainer.model.files import model_dir_digest
from forge_trainer.model.hf_export import (
    CHATML_TEMPLATE,
    CONFIG_NAME,
    EOS_CHAT_TEMPLATE,
    GENERATION_CONFIG_NAME,
    TOKENIZER_CONFIG_NAME,
    TOKENIZER_NAME,
    write_hf_dir,
)
from forge_trainer.model.hf_import import read_tokenizer_files
from forge_trainer.model.transformer import Transformer
from forge_trainer.store import ObjectStore, StoreError, join_key, open_uri
from forge_trainer.train.base_model import BaseModel, open_base_model
from forge_trainer.train.chat import ChatTokenizer, tokenizer_config_patch
from forge_trainer.train.chat_template import TemplateChatTokenizer, template_of
from forge_trainer.train.lora import (
    apply_lora,
    base_state_dict,
    init_adapters,
    is_adapter,
    merged_state_dict,
    quantize_meta_layers,
    save_adapter,
)
from forge_trainer.train.parallel import build_model, data_parallel_strategy, gather_state, unwrap, wrap_model
from forge_trainer.train.progress import ProgressReporter
from forge_trainer.train.runtime import Runtime

log = logging.getLogger(__name__)


@dataclass
class Base:
    """The model a post-training run starts from, with its chat tokenizer."""

    model: Transformer
    args: ModelArgs
    chat: ChatTokenizer
    eos_id: int
    pad_id: int
    tokenizer_files: dict[str, bytes] = field(default_factory=dict)
    """The base's tokenizer files, kept by the export (when its own chat template is used)."""
    source: BaseModel | None = None
    """The base directory (while `load_base` holds it open) and its digest."""

    def load(self, model: Transformer) -> None:
        """Fill `model` (this base built on the meta device, with the method's adapters, materialised by
        `wrap_model`) with the base's weights, each worker its own rows: QLoRA layers quantize their
        whole weight first, then the rest is read, then the adapters get their starting values."""
        if self.source is None:
            raise RuntimeError("the base directory is not open: load inside load_base")
        source = self.source
        quantize_meta_layers(model, lambda name, shape: source.read_weight(name, shape, model.args.intermediate_size))
        source.load(model, fresh=is_adapter)
        init_adapters(model)

    @property
    def digest(self) -> str | None:
        """sha256 over the base directory's files (main worker only), for the run's lineage."""
        return self.source.digest if self.source is not None else None


def _read_tokenizer(config: TrainConfig) -> Tokenizer:
    assert config.init_model is not None
    store, prefix = open_uri(config.init_model, config.store)
    key = join_key(prefix, TOKENIZER_NAME)
    try:
        if store.exists(key):
            return Tokenizer.from_str(store.get_bytes(key).decode())
        log.info("%s has no tokenizer.json; using the dataset's", config.init_model)
        return Tokenizer.from_file(str(fetch_tokenizer(config.dataset, config.store)))
    except StoreError as exc:
        raise WorkloadError(f"tokenizer of {config.init_model}: {exc}") from exc


def _chat_tokenizer(config: TrainConfig, tok: Tokenizer) -> tuple[ChatTokenizer, dict[str, bytes]]:
    """The base's own chat template (tokenizer_config.json) when it has one other than Forge's, else ChatML;
    with the base's tokenizer files, which the export keeps when its template is used."""
    assert config.init_model is not None
    try:
        files = read_tokenizer_files(config.init_model, config.store)
        tok_config = json.loads(files[TOKENIZER_CONFIG_NAME]) if TOKENIZER_CONFIG_NAME in files else {}
    except StoreError as exc:
        raise WorkloadError(f"tokenizer of {config.init_model}: {exc}") from exc
    except ValueError as exc:
        raise ConfigError(f"initModel {config.init_model}: {TOKENIZER_CONFIG_NAME} is not JSON: {exc}") from exc
    template = template_of(tok_config) if isinstance(tok_config, dict) else None
    if template is None or template in (CHATML_TEMPLATE, EOS_CHAT_TEMPLATE) or TOKENIZER_NAME not in files:
        return ChatTokenizer(tok), {}
    try:
        return TemplateChatTokenizer(tok, template, tok_config), files
    except ValueError as exc:
        raise ConfigError(f"initModel {config.init_model}: {exc}") from exc


@contextlib.contextmanager
def load_base(config: TrainConfig, runtime: Runtime) -> Iterator[Base]:
    """The base model (on the meta device: `Base.load` fills it) and tokenizer of a sft/rl run, for the
    duration of the block; chat tokens are added (and the vocabulary grown) when the tokenizer lacks
    them. Collective: every worker enters it and loads inside it."""
    if not config.init_model:
        raise ConfigError(f"initModel: stage {config.stage.value} starts from a base model; set initModel "
                          "(or the run's base) to a Hugging Face–format model directory")
    with open_base_model(config, runtime) as source:
        assert source is not None
        chat, base_files = _chat_tokenizer(config, _read_tokenizer(config))
        if chat.added:
            log.warning("tokenizer lacked %s; added them and grew the vocabulary to %d", chat.added,
                        chat.vocab_size)
        args = with_vocab(source.args, chat.vocab_size) if chat.vocab_size > source.args.vocab_size else source.args
        eos, pad = special_token_ids(chat.tok)
        yield Base(build_model(args), args, chat, eos, pad if pad is not None else eos, base_files, source)


def load_frozen_copy(model: Transformer, base: Base, runtime: Runtime) -> None:
    """Place and load a frozen copy of the base built on the meta device (the RL reference for full
    fine-tuning) as the policy is placed: sharded under FSDP2, whole otherwise (DDP has nothing to
    synchronise for a model without gradients)."""
    if data_parallel_strategy(runtime) == "fsdp":
        wrap_model(model, runtime, load=base.load)
    else:
        model.materialize(runtime.device, init=False)
        base.load(model)


def prepare_for_method(model: Transformer, config: TrainConfig) -> list[str]:
    """Freeze and add adapters for lora/qlora (QLoRA quantizes the frozen base to NF4); nothing for full.
    Returns the adapted layer paths."""
    if config.method is SftMethod.FULL:
        return []
    try:
        return apply_lora(model, config.lora, quantize=config.method is SftMethod.QLORA)
    except ValueError as exc:
        raise ConfigError(f"lora.targets: {exc}") from exc


def final_state(model: Transformer, config: TrainConfig, full: dict[str, Tensor]) -> dict[str, Tensor]:
    """Weights for the final export from the gathered `full` state (`gather_state`): adapters merged
    (lora.merge, the default) or the base alone."""
    if config.method is SftMethod.FULL:
        return full
    return merged_state_dict(model, full) if config.lora.merge else base_state_dict(model, full)


def _upload_dir(store: ObjectStore, prefix: str, directory: Path) -> None:
    names = sorted((p.name for p in directory.iterdir() if p.is_file()), key=lambda n: n == CONFIG_NAME)
    for name in names:  # config.json last: a reader that finds it finds the rest
        store.put_file(join_key(prefix, name), directory / name)


def export_model(state: dict[str, Tensor], base: Base, store: ObjectStore, prefix: str) -> tuple[str, str]:
    """Write the Hugging Face export with the ChatML template under `<prefix>/model`; (uri, digest)."""
    with tempfile.TemporaryDirectory(prefix="forge-export-") as tmp:
        staging = Path(tmp)
        write_hf_dir(state, base.args, base.chat.tok.to_str().encode(), staging, eos_token_id=base.eos_id,
                     pad_token_id=base.pad_id)
        if base.tokenizer_files:  # trained in the base's own chat format: its files say so
            for name, data in base.tokenizer_files.items():
                (staging / name).write_bytes(data)
        else:
            tok_config = json.loads((staging / TOKENIZER_CONFIG_NAME).read_text())
            tok_config.update(tokenizer_config_patch())
            (staging / TOKENIZER_CONFIG_NAME).write_text(json.dumps(tok_config, indent=2, sort_keys=True))
        generation = json.loads((staging / GENERATION_CONFIG_NAME).read_text())
        # a chat turn ends at its stop token (<|im_end|>, or the template's end of turn)
        generation["eos_token_id"] = list(dict.fromkeys([base.eos_id, base.chat.im_end]))
        (staging / GENERATION_CONFIG_NAME).write_text(json.dumps(generation, indent=2, sort_keys=True))
        digest = model_dir_digest(staging)
        key = join_key(prefix, MODEL_DIR)
        _upload_dir(store, key, staging)
        return store.uri(key), digest


def export_adapter(model: Transformer, config: TrainConfig, store: ObjectStore, prefix: str,
                   full: dict[str, Tensor]) -> str | None:
    """Write the PEFT adapter (from the gathered `full` state) under `<prefix>/adapter` for lora/qlora;
    its URI (None for full)."""
    if config.method is SftMethod.FULL:
        return None
    with tempfile.TemporaryDirectory(prefix="forge-adapter-") as tmp:
        staging = Path(tmp)
        save_adapter(model, config.lora, staging, base_model=config.init_model, state=full)
        key = join_key(prefix, ADAPTER_DIR)
        _upload_dir(store, key, staging)
        return store.uri(key)


def finish_posttrain(model: nn.Module, config: TrainConfig, runtime: Runtime, base: Base, store: ObjectStore,
                     prefix: str, reporter: ProgressReporter, metrics: dict[str, float]) -> TrainProgress:
    """The end of an sft or rl run: gather the final weights (collective), and on rank 0 export the model
    (and the adapter for lora/qlora) and report it done with its evaluation metrics."""
    core = unwrap(model)
    full = gather_state(core)  # collective: every rank takes part in the gather
    if runtime.is_main:
        uri, digest = export_model(final_state(core, config, full), base, store, prefix)
        export_adapter(core, config, store, prefix, full)
        loss = metrics.get("loss")
        reporter.update(force=True, eval_metrics=metrics,
                        eval_loss=loss if loss is not None and math.isfinite(loss) else None,
                        done=True, final_model_uri=uri, final_model_digest=digest, error=None)
    return reporter.progress
