"""Text adapters (TextProj / linear / none) against a naive re-statement of LLM2CLIP's formula."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clipforge.models.adapters import (
    AdapterSpec,
    LinearAdapter,
    NoAdapter,
    TextProj,
    as_adapter_spec,
    build_adapter,
)


def _naive_textproj(adapter: TextProj, e: torch.Tensor) -> torch.Tensor:
    """x = e / |e|; x += W2 gelu(W1 LN_k(x) + b1) + b2 per block; t = Wp LN(x) + bp (TextProj), op by op."""

    def layer_norm(x, norm):
        mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
        return (x - mu) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias

    x = e / e.norm(dim=-1, keepdim=True)
    for block in adapter.blocks:
        h = layer_norm(x, block.norm) @ block.fc1.weight.T + block.fc1.bias
        h = 0.5 * h * (1 + torch.erf(h / 2**0.5))  # exact GELU
        x = x + h @ block.fc2.weight.T + block.fc2.bias
    return layer_norm(x, adapter.norm) @ adapter.proj.weight.T + adapter.proj.bias


@torch.no_grad()
def _perturbed(module):
    torch.manual_seed(0)
    for p in module.parameters():
        p.add_(torch.randn_like(p) * 0.1)
    return module.eval()


@pytest.mark.parametrize("num_layers", [0, 1, 4])
def test_textproj_matches_the_formula(num_layers):
    adapter = _perturbed(TextProj(12, 5, num_layers=num_layers))
    e = torch.randn(7, 12) * 4
    with torch.no_grad():
        torch.testing.assert_close(adapter(e), _naive_textproj(adapter, e), rtol=1e-5, atol=1e-5)
        # the input is L2-normalised first: the scale of the LLM embedding does not matter
        torch.testing.assert_close(adapter(e * 30), adapter(e), rtol=1e-5, atol=1e-5)


def test_textproj_shapes_and_options():
    adapter = TextProj(16, 6, num_layers=2, expansion=3, bias=False, normalize_input=False)
    assert adapter.blocks[0].fc1.weight.shape == (48, 16)
    assert adapter.proj.bias is None
    e = torch.randn(3, 16)
    assert not torch.allclose(adapter(e * 5), adapter(e))  # no input normalisation


@pytest.mark.parametrize(("dim", "params"), [(4096, 273.8e6), (2048, 69.8e6)])
def test_llm2clip_adapter_parameter_counts(dim, params):
    """Released: 273.8M parameters for Llama-3-8B (4096-d), 69.8M for Llama-3.2-1B (2048-d), into 1280-d."""
    with torch.device("meta"):
        adapter = build_adapter(None, dim, 1280)
    assert isinstance(adapter, TextProj) and len(adapter.blocks) == 4
    assert round(sum(p.numel() for p in adapter.parameters()) / 1e5) == round(params / 1e5)


def test_linear_and_none_kinds():
    lin = build_adapter({"kind": "linear"}, 10, 4)
    assert isinstance(lin, LinearAdapter)
    e = torch.randn(2, 10)
    torch.testing.assert_close(lin(e), F.normalize(e, dim=-1) @ lin.proj.weight.T + lin.proj.bias)
    none = build_adapter(AdapterSpec(kind="none"), 10, 10)
    assert isinstance(none, NoAdapter) and not list(none.parameters())
    torch.testing.assert_close(none(e), F.normalize(e, dim=-1))
    with pytest.raises(ValueError, match="embed_dim == the text embedding width"):
        build_adapter({"kind": "none"}, 10, 4)


def test_spec_validation_and_normalisation():
    assert as_adapter_spec(None) == AdapterSpec()
    assert as_adapter_spec({"num_layers": 2}).num_layers == 2
    spec = AdapterSpec(kind="linear")
    assert as_adapter_spec(spec) is spec
    with pytest.raises(ValueError, match="adapter kind"):
        AdapterSpec(kind="mlp")
    with pytest.raises(ValueError, match="num_layers"):
        AdapterSpec(num_layers=-1)
