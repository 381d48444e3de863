"""The MIFAE model: shapes, token placement, gradients of both branches, losses."""
import numpy as np
import pytest
import torch
import torch.nn as nn

import models_mae
from util.losses import reference_frequency_loss, to_gray


@pytest.mark.parametrize('name', ['mae_vit_tiny_patch16', 'mae_vit_small_patch16', 'mae_vit_base_patch16'])
def test_shapes(name):
    torch.manual_seed(0)
    model = models_mae.MODELS[name](img_size=64)
    x = torch.randn(2, 3, 64, 64)
    mask = torch.stack([model.random_masks(1, 'cpu')[0] for _ in range(2)])
    latent, ids_restore = model.forward_encoder(x, mask)
    assert latent.shape == (2, 1 + 16 - 12, model.cls_token.shape[-1])
    assert ids_restore.shape == (2, 16)
    loss, out = model(x, mask)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert out['pred'].shape == (2, 16, 16 * 16 * 3)
    assert out['freq_pred'].shape == out['low'].shape == x.shape


@pytest.mark.parametrize('name,patch,enc_params', [
    ('mae_vit_large_patch16', 16, 303.1e6), ('mae_vit_huge_patch14', 14, 630.4e6)])
def test_large_factories_on_meta_device(name, patch, enc_params):
    """The big sizes are built without allocating memory: architecture and parameter count."""
    with torch.device('meta'):
        model = models_mae.MODELS[name]()
    assert model.patch_size == patch and model.num_patches == (224 // patch) ** 2
    enc = sum(p.numel() for n, p in model.named_parameters()
              if n.startswith(('patch_embed', 'blocks', 'norm.', 'cls_token')))
    assert abs(enc - enc_params) / enc_params < 0.01
    assert len(model.decoder_blocks) == 8 and model.decoder_embed.out_features == 512


def test_base_matches_mae_vit_b():
    with torch.device('meta'):
        model = models_mae.mae_vit_base_patch16()
    assert len(model.blocks) == 12 and model.cls_token.shape[-1] == 768
    assert len(model.decoder_blocks) == 8 and model.decoder_embed.out_features == 512
    assert model.mask_radius == 16


def test_visible_tokens_return_to_their_own_positions():
    """Encoder output = position embedding of each visible patch; after the decoder's un-shuffle each
    visible token must sit at its own patch, mask tokens elsewhere."""
    torch.manual_seed(0)
    model = models_mae.mae_vit_tiny_patch16(img_size=64)
    d, dd = 192, 128
    with torch.no_grad():
        model.patch_embed.proj.weight.zero_()
        model.patch_embed.proj.bias.zero_()
        model.mask_token.fill_(-7.0)
        model.decoder_pos_embed.zero_()
        model.decoder_embed.weight.copy_(torch.eye(dd, d))
        model.decoder_embed.bias.zero_()
        model.decoder_pred.weight.copy_(torch.eye(16 * 16 * 3, dd))
        model.decoder_pred.bias.zero_()
    model.blocks, model.decoder_blocks = nn.ModuleList(), nn.ModuleList()
    model.norm, model.decoder_norm = nn.Identity(), nn.Identity()

    x = torch.randn(3, 3, 64, 64)
    mask = model.random_masks(3, 'cpu')
    latent, ids_restore = model.forward_encoder(x, mask)
    pred = model.forward_decoder(latent, ids_restore)              # [N, L, 768]
    pos = model.pos_embed[0, 1:, :dd]                              # [L, dd]
    for n in range(3):
        for j in range(16):
            if mask[n, j]:
                assert torch.allclose(pred[n, j, :dd], torch.full((dd,), -7.0))
            else:
                assert torch.allclose(pred[n, j, :dd], pos[j], atol=1e-6)


def test_both_branches_send_gradient_into_the_shared_encoder():
    torch.manual_seed(0)
    model = models_mae.mae_vit_tiny_patch16(img_size=64)
    x = torch.randn(2, 3, 64, 64)
    mask = model.random_masks(2, 'cpu')
    _, out = model(x, mask)
    shared = [model.blocks[0].attn.qkv.weight, model.patch_embed.proj.weight, model.norm.weight]
    g_spat = torch.autograd.grad(out['spat_loss'], shared + [model.freq_cls_token], allow_unused=True)
    g_freq = torch.autograd.grad(out['freq_loss'], shared + [model.cls_token], allow_unused=True)
    assert all(g is not None and g.abs().sum() > 0 for g in g_spat[:3])
    assert all(g is not None and g.abs().sum() > 0 for g in g_freq[:3])
    assert g_spat[3] is None or g_spat[3].abs().sum() == 0       # spatial branch never sees freq_cls_token
    assert g_freq[3] is None or g_freq[3].abs().sum() == 0       # nor the frequency branch cls_token


def test_loss_is_zero_when_prediction_equals_target():
    torch.manual_seed(0)
    model = models_mae.mae_vit_tiny_patch16(img_size=64)
    x = torch.randn(2, 3, 64, 64)
    model.forward_decoder = lambda latent, ids_restore=None: model.patchify(x)
    model.forward_freq_decoder = lambda latent: to_gray(x)[:, None].expand(-1, 3, -1, -1)
    loss, out = model(x, model.random_masks(2, 'cpu'))     # the reference's loss: each channel against grey
    assert float(out['spat_loss']) == 0.0 and float(out['freq_loss']) < 1e-3 and float(loss) < 1e-3
    ffl = models_mae.mae_vit_tiny_patch16(img_size=64, freq_loss='ffl')
    ffl.forward_decoder, ffl.forward_freq_decoder = model.forward_decoder, lambda latent: x
    loss, out = ffl(x, model.random_masks(2, 'cpu'))
    assert float(out['freq_loss']) == 0.0 and float(loss) == 0.0


def test_default_objective_is_the_reference_codes():
    """No method flag: the reference's frequency loss with lamda 1, mask ratio 0.75, radius 16 at 224 px."""
    import main_pretrain
    args = main_pretrain.get_args_parser().parse_args([])
    assert (args.freq_loss, args.lamda, args.mask_ratio, args.input_size) == ('reference', 1.0, 0.75, 224)
    model = models_mae.mae_vit_tiny_patch16(img_size=32)
    assert model.freq_loss_name == 'reference'
    torch.manual_seed(0)
    x, pred = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    got = model.frequency_loss(x, pred)
    torch.testing.assert_close(got, reference_frequency_loss(pred, to_gray(x), model.freq_scored))
    with pytest.raises(ValueError, match='freq_loss'):
        models_mae.mae_vit_tiny_patch16(img_size=32, freq_loss='l2')


def test_norm_pix_loss_and_lamda():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    a = models_mae.mae_vit_tiny_patch16(img_size=64, lamda=0.0)
    mask = a.random_masks(2, 'cpu')
    loss, out = a(x, mask)
    assert torch.allclose(loss, out['spat_loss'])
    b = models_mae.mae_vit_tiny_patch16(img_size=64, norm_pix_loss=True)
    b.load_state_dict(a.state_dict())
    _, out_b = b(x, mask)
    assert not torch.allclose(out_b['spat_loss'], out['spat_loss'])


def test_patchify_roundtrip_and_bad_sizes():
    model = models_mae.mae_vit_tiny_patch16(img_size=64)
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(model.unpatchify(model.patchify(x)), x)
    with pytest.raises(ValueError, match='divisible'):
        models_mae.mae_vit_tiny_patch16(img_size=60)
    with pytest.raises(ValueError, match='mask_radius'):
        models_mae.mae_vit_tiny_patch16(img_size=64, mask_radius=100)


def test_sincos_position_embedding_has_mae_channel_layout():
    """Channels [0, D/2) encode the column, [D/2, D) the row, each as sines then cosines (MAE's layout: an
    original MAE checkpoint's weights then meet the positions they were trained with); the cls row is zero."""
    from util.pos_embed import sincos_pos_embed_2d
    dim, grid = 16, 5
    emb = sincos_pos_embed_2d(dim, grid, cls_token=True)
    assert emb.shape == (1 + grid * grid, dim) and not emb[0].any()
    omega = 1.0 / 10000 ** (np.arange(dim // 4) / (dim / 4))
    for row in range(grid):
        for col in range(grid):
            expected = np.concatenate([np.sin(col * omega), np.cos(col * omega),
                                       np.sin(row * omega), np.cos(row * omega)])
            np.testing.assert_allclose(emb[1 + row * grid + col], expected, atol=1e-6)


@pytest.mark.parametrize('name', ['mae_vit_micro_patch8', 'mae_vit_base_patch16'])
def test_frequency_decoder_is_the_references(name):
    """Frequency tokens go through the spatial decoder's own decoder_embed, then Linear(Dd, Dd, bias=False)
    -> LayerNorm -> Linear(Dd, p*p*3); Dd is the model's decoder width (512 for ViT-B)."""
    with torch.device('meta'):
        big = models_mae.MODELS[name]()
    dd, p = models_mae.ARCHS[name[4:]]['decoder_embed_dim'], models_mae.ARCHS[name[4:]]['patch_size']
    assert big.freq_decoder.bias is None and tuple(big.freq_decoder.weight.shape) == (dd, dd)
    assert isinstance(big.freq_decoder_norm, nn.LayerNorm) and big.freq_decoder_norm.normalized_shape == (dd,)
    assert tuple(big.freq_decoder_pred.weight.shape) == (p * p * 3, dd) and big.freq_decoder_pred.bias is not None
    assert not [k for k in big.state_dict() if k.startswith(('freq_decoder_embed', 'freq_decoder_fc'))]
    if name != 'mae_vit_micro_patch8':
        return
    torch.manual_seed(0)
    model = models_mae.MODELS[name](img_size=32)
    latent = torch.randn(2, 1 + 16, 128)
    embedded = latent[:, 1:] @ model.decoder_embed.weight.T + model.decoder_embed.bias
    expected = model.freq_decoder_pred(model.freq_decoder_norm(embedded @ model.freq_decoder.weight.T))
    torch.testing.assert_close(model.forward_freq_decoder(latent), model.unpatchify(expected))
    _, out = model(torch.randn(2, 3, 32, 32))
    g = torch.autograd.grad(out['freq_loss'], model.decoder_embed.weight)[0]
    assert g.abs().sum() > 0                              # the shared embedding learns from the frequency branch too
