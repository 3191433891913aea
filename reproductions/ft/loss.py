"""Kim, Park, Kwak, NeurIPS 2018, "Paraphrasing Complex Network: Network Compression via Factor
Transfer" (FT, arXiv 1802.04977), as the CRD benchmark (RepDistiller) ran it."""
import torch
import torch.nn.functional as F
from torch import nn

from kdbench.connectors import match_spatial


def factor(f: torch.Tensor) -> torch.Tensor:
    """RepDistiller's factor: channel-mean of the squared map, flattened, L2-normalised (B, H*W)."""
    return F.normalize(f.pow(2).mean(1).flatten(1))


def factor_transfer_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of the factors (p1 = 2, p2 = 1), larger map pooled to the smaller."""
    f_s, f_t = match_spatial(f_s, f_t)
    return (factor(f_s.float()) - factor(f_t.float())).abs().mean()


def _convs(channels: list[int], conv, bn: bool) -> nn.Sequential:
    layers = []
    for c_in, c_out in zip(channels[:-1], channels[1:]):
        layers += [conv(c_in, c_out, 3, 1, 1), nn.BatchNorm2d(c_out) if bn else nn.Identity(),
                   nn.LeakyReLU(0.1)]
    return nn.Sequential(*layers)


class Paraphraser(nn.Module):
    """Auto-encoder on the teacher feature: 3 convs down to k*C channels, 3 transposed convs back;
    LeakyReLU(0.1) after each, no BN (official ``use_bn=False``)."""

    def __init__(self, channels: int, k: float = 0.5):
        super().__init__()
        mid = int(channels * k)
        self.encoder = _convs([channels, channels, mid, mid], nn.Conv2d, bn=False)
        self.decoder = _convs([mid, mid, channels, channels], nn.ConvTranspose2d, bn=False)

    def forward(self, f):
        code = self.encoder(f)
        return code, self.decoder(code)


class Translator(nn.Module):
    """Student-side encoder to the teacher factor's width: 3 convs with BN and LeakyReLU(0.1)."""

    def __init__(self, s_channels: int, t_channels: int, k: float = 0.5):
        super().__init__()
        self.encoder = _convs([s_channels, s_channels, int(t_channels * k), int(t_channels * k)], nn.Conv2d, bn=True)

    def forward(self, f):
        return self.encoder(f)
