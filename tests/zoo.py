"""Tiny random-init models of many kinds, with inputs and labels, for the model matrix tests.

Hugging Face models are built from configs only (nothing is downloaded). Every case gives a
builder (seeded, so two calls build the same network), an input batch, source and target
labels, a loss on the model's raw output, and, where the target's output differs from the
source's, a fresh head for it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils import parametrizations

VOCAB = 40


@dataclass
class Case:
    name: str
    build: Callable[[], nn.Module]
    inputs: Callable[[torch.Generator], Tensor]
    source_out: int  # classes (or vocabulary) of the source task
    target_out: int  # classes of the target task
    head: dict[str, tuple[int, ...]] | None  # new head's tensors and shapes (target_out)
    sequence: bool = False  # labels per position (language models)
    scope: str = "global"  # pruning scope ("layer" where one threshold empties a layer)

    def labels(self, x: Tensor, classes: int, salt: int) -> Tensor:
        """Deterministic labels: a function of the input, different per task (``salt``)."""
        if self.sequence:  # a label per token
            return (x * (3 + salt) + salt) % classes
        key = x.reshape(len(x), -1).float().sum(-1) * (7 + salt)
        return key.floor().long() % classes

    def new_head(self, seed: int = 0) -> dict[str, Tensor] | None:
        if self.head is None:
            return None
        gen = torch.Generator().manual_seed(seed)
        return {n: torch.randn(shape, generator=gen) * 0.05 for n, shape in self.head.items()}


def logits_of(output: object) -> Tensor:
    """The logits of a plain tensor output or of a Hugging Face ``ModelOutput``."""
    return output if isinstance(output, Tensor) else output.logits


def loss_fn(output: object, y: Tensor) -> Tensor:
    logits = logits_of(output)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def _hf(build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return build()

    return make


def gpt2_lm() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=16)
    cfg.bos_token_id = cfg.eos_token_id = 0
    return GPT2LMHeadModel(cfg)


def gpt2_cls() -> nn.Module:
    from transformers import GPT2Config, GPT2ForSequenceClassification

    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=16)
    cfg.bos_token_id = cfg.eos_token_id = cfg.pad_token_id = 0
    cfg.num_labels = 3
    return GPT2ForSequenceClassification(cfg)


def _bert_config(**kw: int):
    from transformers import BertConfig

    return BertConfig(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=VOCAB,
        max_position_embeddings=16,
        **kw,
    )


def bert_mlm() -> nn.Module:
    from transformers import BertForMaskedLM

    return BertForMaskedLM(_bert_config())


def bert_cls() -> nn.Module:
    from transformers import BertForSequenceClassification

    return BertForSequenceClassification(_bert_config(num_labels=3))


def vit() -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=16,
        patch_size=4,
        num_labels=3,
    )
    return ViTForImageClassification(cfg)


def llama_lm() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=64,
        vocab_size=VOCAB,
        max_position_embeddings=16,
        tie_word_embeddings=True,
    )
    cfg.bos_token_id = cfg.eos_token_id = cfg.pad_token_id = 0
    return LlamaForCausalLM(cfg)


class Encoder(nn.Module):
    """torch's TransformerEncoder on continuous inputs (packed in_proj_weight)."""

    def __init__(self, out: int = 3):
        super().__init__()
        self.proj = nn.Linear(6, 16)
        layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, out)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(self.proj(x)).mean(1))


class Recurrent(nn.Module):
    def __init__(self, kind: type[nn.RNNBase], out: int = 3, **kw: object):
        super().__init__()
        self.rnn = kind(4, 16, num_layers=2, batch_first=True, **kw)
        width = (kw.get("proj_size") or 16) * (2 if kw.get("bidirectional") else 1)
        self.head = nn.Linear(width, out)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.rnn(x)[0][:, -1])


class Bag(nn.Module):
    """An embedding model: token embeddings, mean-pooled, an MLP and a head."""

    def __init__(self, out: int = 3):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 24)
        self.norm = nn.LayerNorm(24)
        self.hidden = nn.Linear(24, 24)
        self.out = nn.Linear(24, out)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.relu(self.hidden(self.norm(self.embed(x).mean(1)))))


class BatchNormCNN(nn.Module):
    def __init__(self, out: int = 3, weight_norm: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        if weight_norm:
            self.conv2 = parametrizations.weight_norm(self.conv2)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 6 * 6, out)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.fc(torch.relu(self.bn2(self.conv2(x))).flatten(1))


class HeadFirst(nn.Module):
    """Registers its head before its body (the last Linear is not the output layer)."""

    def __init__(self, out: int = 3):
        super().__init__()
        self.head = nn.Linear(16, out)
        self.body = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh())

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class Decoder(nn.Module):
    """Transposed convolutions and a spectral-normed layer (upsampling decoder + head). One
    global threshold would prune its small transposed-convolution weights entirely (a
    spectral norm of a zero matrix is NaN), so it is pruned per layer."""

    def __init__(self, out: int = 3):
        super().__init__()
        self.up1 = nn.ConvTranspose2d(2, 6, 2, stride=2)
        self.up2 = parametrizations.spectral_norm(nn.ConvTranspose2d(6, 6, 2, stride=2))
        self.mix = nn.MultiheadAttention(6, 2, batch_first=True, kdim=6, vdim=6, bias=True)
        self.classifier = nn.Linear(6, out)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.up2(torch.relu(self.up1(x))))  # (B, 6, 12, 12)
        seq = h.flatten(2).transpose(1, 2)
        mixed, _ = self.mix(seq, seq, seq)
        return self.classifier(mixed.mean(1))


def _seeded(cls: Callable[..., nn.Module], **kw: object) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        torch.manual_seed(0)
        return cls(**kw)

    return make


def _tokens(batch: int = 8, length: int = 10) -> Callable[[torch.Generator], Tensor]:
    return lambda g: torch.randint(1, VOCAB, (batch, length), generator=g)


def _floats(*shape: int) -> Callable[[torch.Generator], Tensor]:
    return lambda g: torch.randn(*shape, generator=g)


def _linear_head(name: str, width: int, out: int, bias: bool = True) -> dict[str, tuple]:
    shapes = {f"{name}.weight": (out, width)}
    if bias:
        shapes[f"{name}.bias"] = (out,)
    return shapes


CASES = [
    Case("gpt2_lm", _hf(gpt2_lm), _tokens(), VOCAB, VOCAB, None, sequence=True),
    Case("bert_mlm", _hf(bert_mlm), _tokens(), VOCAB, VOCAB, None, sequence=True),
    Case("bert_cls", _hf(bert_cls), _tokens(), 3, 5, _linear_head("classifier", 32, 5)),
    Case("vit", _hf(vit), _floats(4, 3, 16, 16), 3, 4, _linear_head("classifier", 32, 4)),
    Case("transformer_encoder", _seeded(Encoder), _floats(8, 5, 6), 3, 4,
         _linear_head("head", 16, 4)),
    Case("lstm", _seeded(Recurrent, kind=nn.LSTM), _floats(8, 5, 4), 3, 2,
         _linear_head("head", 16, 2)),
    Case("gru", _seeded(Recurrent, kind=nn.GRU, bidirectional=True), _floats(8, 5, 4), 3, 2,
         _linear_head("head", 32, 2)),
    Case("embedding", _seeded(Bag), _tokens(), 3, 4, _linear_head("out", 24, 4)),
    Case("cnn_batchnorm", _seeded(BatchNormCNN), _floats(8, 1, 6, 6), 3, 4,
         _linear_head("fc", 288, 4)),
    Case("weight_norm_cnn", _seeded(BatchNormCNN, weight_norm=True), _floats(8, 1, 6, 6), 3,
         4, _linear_head("fc", 288, 4)),
]  # fmt: skip
"""The architectures every guarantee is tested on."""

MORE_CASES = [
    Case("gpt2_cls", _hf(gpt2_cls), _tokens(), 3, 4, _linear_head("score", 32, 4, bias=False)),
    Case("llama_lm_tied", _hf(llama_lm), _tokens(), VOCAB, VOCAB, None, sequence=True),
    Case("head_first", _seeded(HeadFirst), _floats(8, 6), 3, 4, _linear_head("head", 16, 4)),
    Case("decoder", _seeded(Decoder), _floats(4, 2, 3, 3), 3, 4,
         _linear_head("classifier", 6, 4), scope="layer"),
    Case("lstm_proj", _seeded(Recurrent, kind=nn.LSTM, proj_size=8), _floats(8, 5, 4), 3, 2,
         _linear_head("head", 8, 2)),
]  # fmt: skip
"""Further architectures (Llama with RMSNorm and tied head, a head registered first,
transposed and spectral-normed convolutions, attention with kdim/vdim, LSTM projections)."""


def _small(**kw: object) -> dict:
    return {"vocab_size": VOCAB, **kw}


def bart() -> nn.Module:
    from transformers import BartConfig, BartForConditionalGeneration

    return BartForConditionalGeneration(BartConfig(**_small(
        d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        max_position_embeddings=40,
    )))  # fmt: skip


def t5() -> nn.Module:
    from transformers import T5Config, T5ForConditionalGeneration

    return T5ForConditionalGeneration(
        T5Config(**_small(d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2))
    )


def albert() -> nn.Module:
    from transformers import AlbertConfig, AlbertForMaskedLM

    return AlbertForMaskedLM(AlbertConfig(**_small(
        embedding_size=16, num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
        intermediate_size=64,
    )))  # fmt: skip


def whisper() -> nn.Module:
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    return WhisperForConditionalGeneration(WhisperConfig(**_small(
        d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=8,
        max_source_positions=16, max_target_positions=16, pad_token_id=0, bos_token_id=1,
        eos_token_id=2, decoder_start_token_id=1,
    )))  # fmt: skip


def convnext() -> nn.Module:
    from transformers import ConvNextConfig, ConvNextForImageClassification

    cfg = ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=3)
    return ConvNextForImageClassification(cfg)


def swin() -> nn.Module:
    from transformers import SwinConfig, SwinForImageClassification

    cfg = SwinConfig(
        image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2],
        window_size=4, num_labels=3,
    )  # fmt: skip
    return SwinForImageClassification(cfg)


def _seq2seq(g: torch.Generator) -> dict[str, Tensor]:
    ids = torch.randint(3, VOCAB, (2, 8), generator=g)
    return {"input_ids": ids, "decoder_input_ids": ids}


KEYWORD_CASES = {
    "bart_tied_thrice": (_hf(bart), _seq2seq),
    "t5": (_hf(t5), _seq2seq),
    "albert_shared_layers": (_hf(albert), lambda g: {"input_ids": _tokens(2, 8)(g)}),
    "whisper": (_hf(whisper), lambda g: {
        "input_features": torch.randn(2, 8, 32, generator=g),
        "decoder_input_ids": torch.randint(3, VOCAB, (2, 6), generator=g),
    }),
    "convnext": (_hf(convnext), lambda g: {"pixel_values": torch.randn(2, 3, 32, 32, generator=g)}),
    "swin": (_hf(swin), lambda g: {"pixel_values": torch.randn(2, 3, 32, 32, generator=g)}),
}  # fmt: skip
"""Models called with keyword inputs (encoder-decoders, shared layers, images): checked
through the masking, task switching and checkpoints directly, without pacnet's loop."""


# -- mixture-of-experts models and relative attention: stacks of matrices ------------------


def _decoder(**kw: object) -> dict:
    return {
        "num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2,
        "num_key_value_heads": 1, "intermediate_size": 48, "vocab_size": VOCAB,
        "max_position_embeddings": 32, "pad_token_id": 0, "bos_token_id": 0,
        "eos_token_id": 0, **kw,
    }  # fmt: skip


def mixtral() -> nn.Module:
    from transformers import MixtralConfig, MixtralForCausalLM

    return MixtralForCausalLM(MixtralConfig(**_decoder(num_local_experts=4)))


def qwen3_moe() -> nn.Module:
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    cfg = Qwen3MoeConfig(**_decoder(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=24))
    return Qwen3MoeForCausalLM(cfg)


def deepseek_v3() -> nn.Module:
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    cfg = DeepseekV3Config(**_decoder(
        n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=24, n_group=1,
        topk_group=1, first_k_dense_replace=1, kv_lora_rank=16, q_lora_rank=16,
        qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8, head_dim=8, num_key_value_heads=2,
    ))  # fmt: skip
    return DeepseekV3ForCausalLM(cfg)


def gpt_oss() -> nn.Module:
    from transformers import GptOssConfig, GptOssForCausalLM

    cfg = GptOssConfig(**_decoder(
        num_local_experts=4, num_experts_per_tok=2, head_dim=16, sliding_window=8,
        layer_types=["sliding_attention", "full_attention"],
    ))  # fmt: skip
    return GptOssForCausalLM(cfg)


def dbrx() -> nn.Module:
    from transformers import DbrxConfig, DbrxForCausalLM

    cfg = DbrxConfig(
        d_model=32, n_heads=2, n_layers=2, max_seq_len=32, vocab_size=VOCAB,
        attn_config={"kv_n_heads": 1, "clip_qkv": 8.0}, ffn_config={"ffn_hidden_size": 24,
        "moe_num_experts": 4, "moe_top_k": 2}, pad_token_id=0, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    cfg.attn_config.rope_theta = cfg.rope_parameters["rope_theta"]  # read there, not set
    return DbrxForCausalLM(cfg)


def xlnet() -> nn.Module:
    from transformers import XLNetConfig, XLNetLMHeadModel

    cfg = XLNetConfig(vocab_size=VOCAB, d_model=32, n_layer=2, n_head=2, d_inner=48)
    return XLNetLMHeadModel(cfg)


EXPERT_CASES = [
    Case(name, _hf(build), _tokens(4, 8), VOCAB, VOCAB, None, sequence=True)
    for name, build in [
        ("mixtral", mixtral), ("qwen3_moe", qwen3_moe), ("deepseek_v3", deepseek_v3),
        ("gpt_oss", gpt_oss), ("dbrx", dbrx), ("xlnet", xlnet),
    ]
]  # fmt: skip
"""Models whose weights include stacks of matrices: the 3-D experts of transformers'
mixture-of-experts models, DBRX's experts side by side in 2-D, XLNet's relative attention."""
