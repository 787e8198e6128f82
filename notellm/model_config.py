"""Settings of the NoteLLM model, its prompt, training and embedding (config sections, no torch import)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from notellm.section import Section

EMB_TOKEN = "[EMB]"
Precision = Literal["auto", "on", "off"]


class TemplateConfig(Section):
    """The words of the Note Compression Prompt; ``{j}`` is the number of hashtags to generate."""

    compression_instruction: str = ("Extract the note information in json format, compress it into one word "
                                    "for recommendation.")
    category_instruction: str = ("Extract the note information in json format, compress it into one word "
                                 "for recommendation, and generate the category of the note.")
    hashtag_instruction: str = ("Extract the note information in json format, compress it into one word "
                                "for recommendation, and generate {j} topics of the note.")
    compression: str = f'The compression word is:"{EMB_TOKEN}".'
    category_guidance: str = "The category is:"
    hashtag_guidance: str = "The {j} topics are:"
    title_key: str = "title"
    topic_key: str = "topic"
    content_key: str = "content"
    hashtag_separator: str = ", "
    separator: str = Field(" ", description="between instruction, note, compression sentence and guidance")
    output_prefix: str = Field(" ", description="between the guidance and the output")
    prompteol: str = 'This note: "{note}" means in one word:"'
    repllama: str = "{note}"

    @model_validator(mode="after")
    def _check(self) -> TemplateConfig:
        if self.compression.count(EMB_TOKEN) != 1:
            raise ValueError(f"template.compression must contain {EMB_TOKEN} exactly once")
        for name in ("hashtag_instruction", "hashtag_guidance"):
            if "{j}" not in getattr(self, name):
                raise ValueError(f"template.{name} must contain {{j}}")
        for name in ("prompteol", "repllama"):
            if "{note}" not in getattr(self, name):
                raise ValueError(f"template.{name} must contain {{note}}")
        return self


CHINESE_TEMPLATE = TemplateConfig(
    compression_instruction="提取笔记信息（json格式），压缩为一个词用于推荐。",
    category_instruction="提取笔记信息（json格式），压缩为一个词用于推荐，并生成笔记的类目。",
    hashtag_instruction="提取笔记信息（json格式），压缩为一个词用于推荐，并生成笔记的{j}个话题。",
    compression=f"压缩为一个词：“{EMB_TOKEN}”。",
    category_guidance="笔记类目：",
    hashtag_guidance="笔记的{j}个话题：",
    title_key="标题", topic_key="话题", content_key="内容",
    hashtag_separator="，", separator="", output_prefix="",
    prompteol="这篇笔记：“{note}”用一个词表示为：“",
)
TEMPLATES = {"en": TemplateConfig(), "zh": CHINESE_TEMPLATE}


class PromptConfig(Section):
    """How a note becomes a prompt (DESIGN.md: Note Compression Prompt) and which prompt kind pools it."""

    kind: Literal["notellm", "prompteol", "repllama"] = Field(
        "notellm", description="notellm: compression prompt; prompteol / repllama: baseline prompts")
    template: TemplateConfig = Field(TemplateConfig(),
                                     description="'en', 'zh' or a mapping of template fields")
    hashtag_task_share: float = Field(0.4, ge=0, le=1, description="r: share of notes given the hashtag task")
    max_output_hashtags: int = Field(3, ge=1, description="j is drawn from 1..min(this, the note's hashtags)")
    max_input_hashtags: int = Field(10, ge=0)
    title_max: int = Field(32, ge=1)
    content_max: int = Field(128, ge=1)
    length_unit: Literal["tokens", "chars"] = "tokens"
    layout: Literal["official", "paper"] = Field(
        "official", description="official: the note and the compression instruction before [EMB], the task "
                                "guidance after it (one prefix for every task and for embedding); paper: the "
                                "task instruction (with its j) first, topics only in the category task")
    hide_category: bool = Field(
        True, description="the note's category never appears in a CSFT or generation prompt's input (nor, "
                          "with embed_whole_note off, in the embedding prompt's): dropped from the topics and, "
                          "as a whole word, from title and content (else CSFT copies it)")
    embed_whole_note: bool = Field(
        True, description="the embedding prompt shows the whole note, category included (the paper embeds "
                           "the prompt that holds all of the note's information), and training pools that same "
                           "prompt; CSFT then reads a second row per note that follows hide_category (about "
                           "twice the tokens per step), so it stays a prediction")
    add_bos: bool = True
    seed: int = 0

    @field_validator("template", mode="before")
    @classmethod
    def _preset(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value not in TEMPLATES:
                raise ValueError(f"unknown template {value!r}: use one of {sorted(TEMPLATES)} or a mapping")
            return TEMPLATES[value].model_dump()
        return value


class ModelConfig(Section):
    """The backbone and the embedding head."""

    backbone: str = Field("smollm2-135m",
                          description="smollm2-135m, tiny-random, or a Hugging Face path or name")
    dim: int | None = Field(128, ge=1, description="projection size d; None keeps the raw hidden state")
    tau_init: float = Field(1.0, description="initial tau; the logit scale is e^tau (the official code's 3 "
                                             "collapses centred states: docs/quality.md)")
    center_notes: int = Field(256, ge=0, description="centre pooled states on the mean of this many training "
                                                     "notes before training (0: no centring)")
    finetune: Literal["lora", "full"] = "lora"
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    lora_target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj",
                                      "gate_proj", "up_proj", "down_proj"]
    train_emb_token: bool = Field(True, description="LoRA: also train the [EMB] embedding row")
    merge_lora: bool = Field(True, description="save merged weights (else the adapter plus the backbone id)")
    gradient_checkpointing: bool = False
    share_prefix: bool = Field(True, description="run the instruction prefix all rows of a batch share once "
                                                 "(same vectors, fewer tokens; ignored under checkpointing)")


class TrainingConfig(Section):
    """Fine-tuning with GCL + alpha * CSFT (DESIGN.md)."""

    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    batch_pairs: int = Field(8, ge=1, description="B related pairs per step and device (2B notes)")
    lr: float = Field(5e-4, gt=0, description="backbone (LoRA or full) learning rate (chosen on val)")
    projection_lr: float = Field(1e-3, gt=0)
    tau_lr: float = Field(1e-2, ge=0, description="tau's learning rate (chosen on val: docs/quality.md)")
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    max_grad_norm: float | None = Field(1.0, gt=0)
    alpha: float = Field(0.01, ge=0, description="CSFT weight; 0 trains GCL only (NoteLLM w/o CSFT)")
    bf16: Precision = Field("auto", description="bf16 autocast: auto = on where the hardware computes bf16 "
                                                "(CUDA; CPUs with AVX512-BF16 or AMX, about 1.2x faster here)")
    seed: int = 0
    threads: int | None = Field(None, ge=1, description="torch CPU threads (None: torch's default)")
    log_every: int = Field(1, ge=1)
    checkpoint_every: int | None = Field(None, ge=1)
    checkpoint_dir: Path | None = Field(None, description="default: <out_dir>.checkpoints beside the model")
    keep_checkpoints: int = Field(2, ge=1)
    resume: bool = Field(False, description="continue from the latest checkpoint in checkpoint_dir")
    val_every: int | None = Field(None, ge=1, description="measure recall on the val pairs every N steps")
    val_max_pairs: int = Field(200, ge=1)
    val_k: int = Field(10, ge=1)
    model_version: str | None = Field(None, description="default: notellm-<UTC time>-<hash of the head>")


class EmbeddingConfig(Section):
    """Embedding a notes table with a trained model."""

    batch_size: int = Field(32, ge=1)
    bf16: Precision = Field("auto", description="bf16 autocast: auto = on for CUDA; off on the CPU (float32 "
                                                "vectors do not depend on the batch a note came in)")
    threads: int | None = Field(None, ge=1)
