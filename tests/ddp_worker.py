"""Run under torchrun: gradients of one training step with the global batch split over the processes.

    python -m torch.distributed.run --nproc_per_node 2 tests/ddp_worker.py OUT.safetensors

Rank 0 writes the averaged gradients of HybridSTU (reconstruction loss) and of the 2D ResUNet
(diffusion loss) after one backward pass through DistributedDataParallel.
"""
import sys

from safetensors.torch import save_file

from tests.ddp_step import global_batches, make_models, step_losses
from unmix.train.trainer import _Distributed, end_process


def main(out: str) -> None:
    ddp = _Distributed()
    cnn, unet = make_models()
    wrapped = [ddp.wrap(cnn), ddp.wrap(unet)]
    batches = {k: ddp.shard(v) for k, v in global_batches().items()}
    loss_cnn, loss_unet = step_losses(wrapped[0], wrapped[1], batches)
    (loss_cnn + loss_unet).backward()
    if ddp.main:
        grads = {f"cnn.{n}": p.grad for n, p in cnn.named_parameters()}
        grads.update({f"unet.{n}": p.grad for n, p in unet.named_parameters() if p.grad is not None})
        save_file({k: v.contiguous() for k, v in grads.items()}, out)
    del wrapped, loss_cnn, loss_unet  # the DDP reducers hold the process group: release them first
    ddp.close()
    end_process(0)


if __name__ == "__main__":
    main(sys.argv[1])
