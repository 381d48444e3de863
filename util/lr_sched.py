"""Per-iteration learning rate: linear warm-up, then half-cycle cosine decay to min_lr."""
import math


def lr_at(epoch, lr, min_lr, warmup_epochs, epochs):
    """Learning rate at a fractional epoch."""
    if epoch < warmup_epochs:
        return lr * epoch / warmup_epochs
    progress = (epoch - warmup_epochs) / max(epochs - warmup_epochs, 1e-8)
    return min_lr + (lr - min_lr) * 0.5 * (1. + math.cos(math.pi * min(progress, 1.0)))


def adjust_learning_rate(optimizer, epoch, args):
    """Set every param group's lr for fractional `epoch` (times its 'lr_scale' when it has one)."""
    lr = lr_at(epoch, args.lr, args.min_lr, args.warmup_epochs, args.epochs)
    for group in optimizer.param_groups:
        group['lr'] = lr * group.get('lr_scale', 1.0)
    return lr
