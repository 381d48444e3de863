"""Fixed 2-D sine-cosine position embeddings and resizing of learned ones."""
import numpy as np
import torch
import torch.nn.functional as F


def _sincos_1d(dim, positions):
    """[M] positions -> [M, dim]: half sines, half cosines over geometric frequencies."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = np.outer(positions.reshape(-1), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_pos_embed_2d(dim, grid_size, cls_token=False):
    """[grid*grid (+1), dim] float32 embedding of the patches in row-major order.

    The first half of the channels encodes the column (x), the second half the row (y): MAE's layout, so
    that the weights of an original MAE checkpoint meet the positions they were trained with.
    With cls_token a zero row is prepended for the class token.
    """
    assert dim % 4 == 0, 'sin-cos embedding needs a dimension divisible by 4'
    ys, xs = np.meshgrid(np.arange(grid_size, dtype=np.float64), np.arange(grid_size, dtype=np.float64),
                         indexing='ij')
    emb = np.concatenate([_sincos_1d(dim // 2, xs), _sincos_1d(dim // 2, ys)], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros([1, dim]), emb], axis=0)
    return emb.astype(np.float32)


def resize_pos_embed(pos_embed, new_grid, num_prefix=1):
    """Bicubically resize a [1, prefix + g*g, D] position embedding to `new_grid` x `new_grid` patches."""
    prefix, grid_tokens = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    old_grid = int(round(grid_tokens.shape[1] ** 0.5))
    if old_grid == new_grid:
        return pos_embed
    d = grid_tokens.shape[-1]
    grid_tokens = grid_tokens.reshape(1, old_grid, old_grid, d).permute(0, 3, 1, 2).float()
    grid_tokens = F.interpolate(grid_tokens, size=(new_grid, new_grid), mode='bicubic', align_corners=False)
    grid_tokens = grid_tokens.permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, d)
    return torch.cat([prefix.float(), grid_tokens], dim=1).to(pos_embed.dtype)
