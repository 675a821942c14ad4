"""CUDA check: CPU-vs-CUDA agreement of one training step, then training and prediction images/s. One JSON line.

Run by ``benchmarks/gpu_check.sh`` (under 8 minutes on one GPU). Agreement: the same weights and batch
take one amortized step on the CPU and on CUDA; the losses and FourierNet's updated weights are
compared (the encoder runs in bf16 autocast on CUDA, so its side is compared with a looser tolerance).
Throughput: both training phases at 64 and 128 px (batch ``--batch-size``) and ``predict_poses``
(encoder and symmetrized choice) on batches of ``--predict-batch`` images.
"""
import argparse
import json
import time

import torch

from cryoai_core.train.config import build
from cryoai_core.train.learner import CryoAILearner

CTF_ROW = [15000.0, 14500.0, 30.0, 300.0, 2.7, 0.1, 0.0, 0.0]


def learner_for(box: int, batch_size: int, device: str, **changes) -> CryoAILearner:
    config = build(box=box, pixel_size_angstrom=3.0, input_box=box, input_pixel_size_angstrom=3.0, epochs=1,
                   batch_size=batch_size, device=device, **changes)
    return CryoAILearner(config).to(device)


def batch(box: int, count: int, device: str, seed: int = 0) -> tuple:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(count, box, box, generator=generator)
    ctf = torch.tensor([CTF_ROW]).repeat(count, 1)
    return images.to(device), ctf.to(device)


def agreement(box: int = 64, batch_size: int = 64) -> dict:
    torch.manual_seed(0)
    cpu = learner_for(box, batch_size, "cpu", bootstrap=False)
    torch.manual_seed(0)
    cuda = learner_for(box, batch_size, "cuda", bootstrap=False)
    images, ctf = batch(box, batch_size, "cpu")
    progress = cpu.config.schedule.marching_fraction
    loss_cpu = float(cpu.step(images, ctf, progress).loss)
    loss_cuda = float(cuda.step(images.cuda(), ctf.cuda(), progress).loss)
    decoder_cpu, decoder_cuda = cpu.decoder.state_dict(), cuda.decoder.state_dict()
    decoder_diff = max((decoder_cpu[name] - decoder_cuda[name].cpu()).abs().max().item() for name in decoder_cpu)
    with torch.no_grad():
        cpu.eval(), cuda.eval()
        rotations_cpu = cpu.encoder(images)[0]
        rotations_cuda = cuda.encoder(images.cuda())[0].cpu()
    return {"agreement_loss_relative": abs(loss_cpu - loss_cuda) / abs(loss_cpu),
            "agreement_decoder_max_abs": decoder_diff,
            "agreement_encoder_rotation_max_abs": (rotations_cpu - rotations_cuda).abs().max().item()}


def training_rate(box: int, phase: str, batch_size: int, steps: int) -> float:
    learner = learner_for(box, batch_size, "cuda")
    images, ctf = batch(box, batch_size, "cuda")
    generator = torch.Generator().manual_seed(0)
    progress = learner.config.schedule.marching_fraction
    learner.phase = phase
    learner.step(images, ctf, progress, generator)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        learner.phase = phase
        learner.step(images, ctf, progress, generator)
    torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - start)


def prediction_rate(box: int, batch_size: int, batches: int) -> float:
    learner = learner_for(box, batch_size, "cuda")
    images, ctf = batch(box, batch_size, "cuda")
    learner.predict_poses(images, ctf)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(batches):
        learner.predict_poses(images, ctf)
    torch.cuda.synchronize()
    return batches * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boxes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--predict-batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(json.dumps({"benchmark": "gpu_check", "cuda": False}))
        raise SystemExit(1)
    figures = {"benchmark": "gpu_check", "cuda": True, "gpu": torch.cuda.get_device_name(),
               "gpus": torch.cuda.device_count(), "torch": torch.__version__, "batch_size": args.batch_size}
    figures.update({name: float(f"{value:.3g}") for name, value in agreement().items()})
    for box in args.boxes:
        for phase in ("bootstrap", "amortized"):
            rate = training_rate(box, phase, args.batch_size, args.steps)
            figures[f"train_images_per_s_{phase}_L{box}"] = round(rate, 1)
        figures[f"predict_images_per_s_L{box}"] = round(prediction_rate(box, args.predict_batch, args.steps), 1)
    figures["peak_memory_mib"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
