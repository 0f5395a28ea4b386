"""One training step shared by the DDP test and its torchrun worker (same models, same global batch)."""
import torch

from unmix.diffusion.schedule import Schedule
from unmix.train.ddpm import diffusion_loss, sam_loss
from unmix.train.models import HybridSTU, ResUNet

BANDS, P, SIZE, BATCH = 12, 3, 8, 4


def make_models():
    torch.manual_seed(0)
    cnn = HybridSTU(bands=BANDS, endmembers=P, reduced_bands=8, width=4)
    unet = ResUNet(dims=2, in_channels=P, base_channels=8, channel_mult=(1, 2), num_res_blocks=1)
    return cnn, unet


def global_batches() -> dict:
    gen = torch.Generator().manual_seed(1)
    return {
        "cube": torch.rand(BATCH, BANDS, SIZE, SIZE, generator=gen),
        "x0": torch.rand(BATCH, P, SIZE, SIZE, generator=gen) * 2 - 1,
        "t": torch.randint(0, 1000, (BATCH,), generator=gen),
        "noise": torch.randn(BATCH, P, SIZE, SIZE, generator=gen),
    }


def step_losses(cnn, unet, batch):
    endmembers = torch.linspace(0.1, 0.9, P * BANDS).reshape(P, BANDS)
    abundances = cnn(batch["cube"])
    recon = torch.einsum("nphw,pb->nbhw", abundances, endmembers)
    pixels = lambda x: x.permute(0, 2, 3, 1).reshape(-1, BANDS)  # noqa: E731
    loss_cnn = sam_loss(pixels(recon), pixels(batch["cube"]), dim=-1) + torch.mean((recon - batch["cube"]) ** 2)
    alphas_cumprod = torch.tensor(Schedule(kind="cosine", T=1000).alphas_cumprod, dtype=torch.float32)
    loss_unet = diffusion_loss(unet, batch["x0"], batch["t"], batch["noise"], alphas_cumprod, "epsilon")
    return loss_cnn, loss_unet
