"""Explanations of the detector's decisions, shared by predict.py and Visualization/: the reconstruction
discrepancy (input vs the frozen decoder's reconstruction), Grad-CAM of the fake logit and its overlay.

Each function leaves the model as it found it (training mode, frozen prefix, no gradients kept).
"""
from pathlib import Path

import torch

from util.datasets import denormalize


@torch.no_grad()
def reconstruction_discrepancy(model, imgs):
    """For a batch of normalised images [N, 3, H, W] on the model's device:
    dict(input [N, 3, H, W] in [0, 1], recon [N, 3, H, W] in [0, 1], diff [N, H, W] = mean over channels
    of |input - recon| in [0, 1] pixel units, prob [N] = fake probability), all float32 on the CPU."""
    was_training = model.training
    model.eval()
    logits, pred = model(imgs, return_recon=True)
    model.train(was_training)
    recon = denormalize(model.recon_images(imgs, pred), model.mean, model.std)
    inp = denormalize(imgs.float(), model.mean, model.std)
    return dict(input=inp.cpu(), recon=recon.cpu(), diff=(inp - recon).abs().mean(dim=1).cpu(),
                prob=model.fake_prob(logits).cpu())


def load_images_for(model, paths):
    """Read face-crop files and normalise them as the model expects. -> [N, 3, S, S]"""
    from util.datasets import FaceTransform, read_image_rgb
    tf = FaceTransform(model.img_size, train=False, mean=model.mean, std=model.std, crop_pct=model.crop_pct)
    return torch.stack([tf(read_image_rgb(Path(p)))[0] for p in paths])



def grad_cam(model, imgs, target_class=1):
    """Grad-CAM (pytorch-grad-cam) of the `target_class` logit (1 = fake) at the last block's first norm,
    the patch tokens reshaped to the patch grid (cls token dropped). imgs: normalised [N, 3, H, W] on the
    model's device. -> [N, H, W] float32 in [0, 1] on the CPU (each map scaled to its own maximum).

    Gradients must reach the last block whatever is frozen: the frozen prefix, which normally runs without
    autograd, runs with it here (on an input that requires grad); nothing is updated."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    grid = model.img_size // model.patch_size

    def tokens_to_grid(t):                                              # [N, 1+L, D] -> [N, D, g, g]
        return t[:, 1:].reshape(t.shape[0], grid, grid, t.shape[-1]).permute(0, 3, 1, 2)

    was_training, first_trainable = model.training, model.first_trainable
    model.first_trainable = 0
    try:
        with torch.enable_grad(), GradCAM(model, [model.blocks[-1].norm1], reshape_transform=tokens_to_grid) as cam:
            maps = cam(input_tensor=imgs.float().detach().requires_grad_(True),
                       targets=[ClassifierOutputTarget(target_class)] * imgs.shape[0])
    finally:
        model.first_trainable = first_trainable
        model.train(was_training)
        model.zero_grad(set_to_none=True)                               # the CAM's backward leaves nothing behind
    return torch.from_numpy(maps).float()


def cam_overlay(img, cam, weight=0.5):
    """[3, H, W] image in [0, 1] and its [H, W] Grad-CAM -> uint8 RGB [H, W, 3] (JET colours blended in)."""
    from pytorch_grad_cam.utils.image import show_cam_on_image
    return show_cam_on_image(img.permute(1, 2, 0).float().clamp(0, 1).numpy(), cam.numpy(), use_rgb=True,
                             image_weight=1 - weight)
