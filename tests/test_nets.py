"""The U-Net, EDM preconditioning and EMA of the embedded models."""

import math

import pytest
import torch

from dode.zoo.nets import EMA, EDMPrecond, UNet, UNetConfig, count_parameters, timestep_embedding
from dode.zoo.train import MINI_NET, REAL_NET

torch.set_num_threads(1)


@pytest.mark.parametrize(
    "config",
    [
        MINI_NET,
        REAL_NET,
        UNetConfig(channels=8, channel_mult=(1, 2), attn_resolutions=(4,), num_heads=2, num_res_blocks=2),
        UNetConfig(channels=8, channel_mult=(1,), attn_resolutions=(8,), num_heads=1),
    ],
    ids=["mini", "real", "two-levels-attn4", "one-level"],
)
def test_unet_maps_images_to_images(config):
    torch.manual_seed(0)
    net = UNet(config).eval()  # no dropout
    # the last conv of every block and the output conv start at zero (identity blocks, zero output);
    # perturb them so the test sees the whole network, as it is after training
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.normal_(std=0.1)
    x = torch.randn(5, 1, 8, 8)
    out = net(x, torch.linspace(0, 999, 5))
    assert out.shape == x.shape and torch.isfinite(out).all()
    # a scalar time is broadcast over the batch
    assert torch.allclose(net(x, torch.tensor(3.0)), net(x, torch.full((5,), 3.0)))
    # the time input matters
    assert not torch.allclose(net(x, torch.zeros(5)), net(x, torch.full((5,), 500.0)))


def test_parameter_counts_of_the_shipped_configs():
    assert 800_000 <= count_parameters(UNet(REAL_NET)) <= 1_300_000
    assert 50_000 <= count_parameters(UNet(MINI_NET)) <= 100_000


def test_attention_blocks_exist_only_where_asked():
    from dode.zoo.nets import AttnBlock

    def n_attn(cfg):
        return sum(isinstance(m, AttnBlock) for m in UNet(cfg).modules())

    assert n_attn(UNetConfig(channels=8, channel_mult=(1, 2, 2), attn_resolutions=())) == 0
    # 2x2: one down block, two up blocks, the middle block
    assert n_attn(UNetConfig(channels=8, channel_mult=(1, 2, 2), attn_resolutions=(2,), num_heads=2)) == 4


def test_bad_configs_and_inputs_are_rejected():
    with pytest.raises(ValueError, match="channels"):
        UNetConfig(channels=6)
    with pytest.raises(ValueError, match="halved"):
        UNetConfig(channel_mult=(1, 2, 2, 2, 2))
    with pytest.raises(ValueError, match="dropout"):
        UNetConfig(dropout=1.0)
    with pytest.raises(ValueError, match="unknown UNetConfig keys"):
        UNetConfig.from_dict({"channels": 8, "width": 3})
    net = UNet(MINI_NET)
    with pytest.raises(ValueError, match="x must have shape"):
        net(torch.zeros(2, 1, 16, 16), torch.zeros(2))
    with pytest.raises(ValueError, match="t must have shape"):
        net(torch.zeros(2, 1, 8, 8), torch.zeros(3))


def test_config_json_round_trip():
    import json

    cfg = UNetConfig(channels=8, channel_mult=(1, 2), attn_resolutions=(4,), time_scale=400.0)
    again = UNetConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and isinstance(again.channel_mult, tuple)


def test_timestep_embedding():
    t = torch.tensor([0.0, 1.0, 999.0])
    emb = timestep_embedding(t, 16)
    assert emb.shape == (3, 16)
    # t = 0: cos = 1, sin = 0; highest frequency is 1 rad per unit
    assert torch.equal(emb[0], torch.cat([torch.ones(8), torch.zeros(8)]))
    assert emb[1, 0].item() == pytest.approx(math.cos(1.0))
    assert emb[1, 8].item() == pytest.approx(math.sin(1.0))
    # lowest frequency is 1 / max_period^((half-1)/half)
    assert emb[2, 15].item() == pytest.approx(math.sin(999.0 * 10000.0 ** (-7 / 8)), rel=1e-5)


class _Recorder(torch.nn.Module):
    """Stands in for F: records its inputs, returns a fixed tensor."""

    def __init__(self, out):
        super().__init__()
        self.out = out

    def forward(self, x, t):
        self.x, self.t = x, t
        return self.out


def test_edm_preconditioning_follows_karras_table_1():
    sd = 0.6
    sigma = torch.tensor([0.002, 0.1, 0.6, 2.0, 80.0], dtype=torch.float64)
    x = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    f_out = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    pre = EDMPrecond(_Recorder(f_out), sigma_data=sd).double()
    d = pre(x, sigma)

    # the paper's definitions, written out independently
    for i, s in enumerate(sigma.tolist()):
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / math.sqrt(s**2 + sd**2)
        c_in = 1 / math.sqrt(s**2 + sd**2)
        c_noise = math.log(s) / 4
        assert torch.allclose(pre.net.x[i], c_in * x[i])
        assert pre.net.t[i].item() == pytest.approx(c_noise)
        assert torch.allclose(d[i], c_skip * x[i] + c_out * f_out[i])
    # the properties the coefficients are derived from (Karras et al. 2022, appendix B.6): unit input
    # variance and c_out^2 lambda(sigma) = 1 for the loss weight lambda = (sigma^2 + sd^2) / (sigma sd)^2
    c_skip, c_out, c_in, _ = pre.coefficients(sigma)
    ones = torch.ones(5, dtype=torch.float64)
    assert torch.allclose(c_in**2 * (sd**2 + sigma**2), ones)
    assert torch.allclose(c_out**2 * (sigma**2 + sd**2) / (sigma * sd) ** 2, ones)
    assert float(pre.sigma_data) == pytest.approx(sd)
    with pytest.raises(ValueError, match="sigma must be positive"):
        pre(x, torch.zeros(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="sigma_data"):
        EDMPrecond(_Recorder(f_out), sigma_data=0.0)


def test_ema_update_rule_and_warmup():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    model.register_buffer("counter", torch.zeros(()))
    ema = EMA(model, decay=0.9, warmup=False)
    before = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
        model.counter.fill_(7.0)
    ema.update()
    assert torch.allclose(ema.shadow.weight, 0.9 * before + 0.1 * model.weight)
    assert float(ema.shadow.counter) == 7.0  # buffers are copied
    assert not any(p.requires_grad for p in ema.shadow.parameters())

    warm = EMA(model, decay=0.999)
    assert warm.current_decay() == pytest.approx(1 / 10)
    warm.num_updates = 10_000
    assert warm.current_decay() == pytest.approx(0.999)
    with pytest.raises(ValueError, match="decay"):
        EMA(model, decay=1.0)
