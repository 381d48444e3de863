"""MIFAE: a ViT masked autoencoder with a spatial and a frequency pretext task sharing one encoder.

Spatial branch (facial-region-guided masking): the encoder sees the visible 25% of the patches, the
spatial decoder (MAE's, 8 x 512 for ViT-B) predicts the removed ones; MSE on removed patches.
Frequency branch (high-frequency masking): the encoder -- same blocks, own cls token -- sees all
patches of the low-pass image; a light frequency decoder (on the spatial decoder's decoder_embed)
predicts an image whose spectrum must match the grey original's in the masked high-frequency bins
(the reference code's loss, or Jiang et al.'s focal frequency loss with --freq_loss ffl).
loss = spatial + lamda * frequency.

Shapes are static throughout: a mask removes a fixed number of patches, visible tokens are picked with
`gather` on index tensors, so the step compiles into one graph and needs no host synchronisation.
"""
from functools import partial

import torch
import torch.nn as nn
from huggingface_hub import PyTorchModelHubMixin
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block

import util.checkpoint as checkpoint
import util.hub as hub
from util.freq import filter_spectrum, low_pass_mask, max_radius
from util.losses import FREQ_LOSSES, masked_patch_mse, to_gray
from util.masking import num_masked
from util.pos_embed import sincos_pos_embed_2d


class SpatialDecoder(nn.Module, PyTorchModelHubMixin, library_name='mifae-forensics',
                     model_card_template=hub.CARD_TEMPLATE,
                     tags=['deepfake-detection', 'vision-transformer', 'masked-autoencoder']):
    """The spatial decoder, shared by the autoencoder (stage 1) and the detector (stage 2): decoder_embed,
    decoder_pos_embed (fixed sin-cos), decoder_blocks, decoder_norm, decoder_pred -- MAE's names, so that the
    checkpoints of both stages and of MAE hold the same keys. Subclasses call `build_spatial_decoder` in
    __init__; each stage only decides which tokens reach `decode_tokens`.

    Both stages are Hugging Face Hub models (huggingface_hub's PyTorchModelHubMixin): `save_pretrained(dir)`
    writes model.safetensors, config.json (the __init__ arguments, plus what util.hub adds) and a model card,
    `from_pretrained(dir_or_repo_id)` rebuilds the model from them, `push_to_hub(repo_id)` uploads.
    The scripts read such folders and Hub ids through util.hub.load_checkpoint."""

    def build_spatial_decoder(self, embed_dim, decoder_embed_dim, decoder_depth, decoder_num_heads, mlp_ratio,
                              norm_layer, patch_size, in_chans, grid):
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.register_buffer('decoder_pos_embed',
                             torch.from_numpy(sincos_pos_embed_2d(decoder_embed_dim, grid, True))[None])
        self.decoder_blocks = nn.ModuleList([
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
            for _ in range(decoder_depth)])
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size ** 2 * in_chans)

    def decode_tokens(self, x):
        """Embedded tokens, cls + all L in patch order [N, 1+L, Dd] -> every patch's pixels [N, L, p*p*C]."""
        x = x + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]


def default_mask_radius(img_size):
    """The paper's radius of 16 frequency bins at 224 px, scaled with the input size."""
    return 16.0 * img_size / 224


class MaskedImageFrequencyAutoencoder(SpatialDecoder):
    def __init__(self, img_size=224, patch_size=16, in_chans=3,
                 embed_dim=1024, depth=24, num_heads=16,
                 decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16,
                 mlp_ratio=4., norm_layer=partial(nn.LayerNorm, eps=1e-6),
                 norm_pix_loss=False, mask_ratio=0.75, mask_radius=None, freq_loss='reference', ffl_alpha=1.0,
                 lamda=1.0):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f'img_size {img_size} is not divisible by the patch size {patch_size}')
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.norm_pix_loss, self.mask_ratio = norm_pix_loss, mask_ratio
        self.mask_radius = default_mask_radius(img_size) if mask_radius is None else float(mask_radius)
        if not 0 < self.mask_radius <= max_radius(img_size, img_size):
            raise ValueError(f'mask_radius {self.mask_radius} must lie in (0, {max_radius(img_size, img_size):.1f}]'
                             f' for a {img_size}x{img_size} spectrum')
        if freq_loss not in FREQ_LOSSES:
            raise ValueError(f'freq_loss {freq_loss!r} is unknown; choose one of {", ".join(FREQ_LOSSES)}')
        self.freq_loss_name, self.ffl_alpha, self.lamda = freq_loss, ffl_alpha, lamda

        # ---- shared encoder
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        num_patches = self.patch_embed.num_patches
        self.num_patches = num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.freq_cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))   # the frequency branch's own
        grid = img_size // patch_size
        self.register_buffer('pos_embed', torch.from_numpy(sincos_pos_embed_2d(embed_dim, grid, True))[None])
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer) for _ in range(depth)])
        self.norm = norm_layer(embed_dim)

        # ---- spatial decoder (shared with the detector), with the mask token of the removed patches
        self.build_spatial_decoder(embed_dim, decoder_embed_dim, decoder_depth, decoder_num_heads, mlp_ratio,
                                   norm_layer, patch_size, in_chans, grid)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))

        # ---- light frequency decoder (the reference's): the spatial decoder's own decoder_embed (shared, so it
        # learns from both branches) -> Linear without bias -> LayerNorm -> Linear to pixels
        self.freq_decoder = nn.Linear(decoder_embed_dim, decoder_embed_dim, bias=False)
        self.freq_decoder_norm = norm_layer(decoder_embed_dim)
        self.freq_decoder_pred = nn.Linear(decoder_embed_dim, patch_size ** 2 * in_chans)

        # ---- frequency filters, in FFT (unshifted) order: 1 = kept low frequency / 1 = scored high frequency
        _, keep = low_pass_mask(img_size, img_size, self.mask_radius)
        self.register_buffer('freq_keep', keep.clone(), persistent=False)
        self.register_buffer('freq_scored', 1 - keep, persistent=False)

        self.initialize_weights()

    def initialize_weights(self):
        w = self.patch_embed.proj.weight.data
        torch.nn.init.xavier_uniform_(w.view([w.shape[0], -1]))     # like a Linear on flattened patches
        for t in (self.cls_token, self.freq_cls_token, self.mask_token):
            torch.nn.init.normal_(t, std=.02)
        self.apply(self.init_weights)

    @staticmethod
    def init_weights(m):
        if isinstance(m, nn.Linear):
            torch.nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    # ------------------------------------------------------------------ patches
    def patchify(self, imgs):
        """[N, C, H, W] -> [N, L, p*p*C] (patch pixels in (row, col, channel) order)."""
        p, c = self.patch_size, self.in_chans
        n, _, h, w = imgs.shape
        x = imgs.reshape(n, c, h // p, p, w // p, p)
        return torch.einsum('nchpwq->nhwpqc', x).reshape(n, (h // p) * (w // p), p * p * c)

    def unpatchify(self, x):
        """[N, L, p*p*C] -> [N, C, H, W]."""
        p, c = self.patch_size, self.in_chans
        g = int(round(x.shape[1] ** .5))
        x = x.reshape(x.shape[0], g, g, p, p, c)
        return torch.einsum('nhwpqc->nchpwq', x).reshape(x.shape[0], c, g * p, g * p)

    def random_masks(self, n, device):
        """Vanilla MAE masks made on the device (for benchmarks and mask-less calls). -> [N, L] bool"""
        L = self.num_patches
        order = torch.rand(n, L, device=device).argsort(dim=1)
        return order.argsort(dim=1) < num_masked(L, self.mask_ratio)

    # ------------------------------------------------------------------ spatial branch
    def forward_encoder(self, imgs, mask):
        """Encode the visible patches. mask: [N, L], True = removed. -> latent [N, 1+K, D], ids_restore [N, L]"""
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:]                  # [N, L, D]
        n, L, d = x.shape
        num_keep = L - num_masked(L, self.mask_ratio)
        ids_shuffle = torch.argsort(mask.to(torch.uint8), dim=1, stable=True)  # visible first, in patch order
        ids_restore = torch.argsort(ids_shuffle, dim=1)                     # token j -> patch ids_shuffle[j]
        ids_keep = ids_shuffle[:, :num_keep]                                # [N, K]
        x = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, d))  # [N, K, D]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(n, -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), ids_restore

    def forward_decoder(self, latent, ids_restore):
        """Predict every patch's pixels from cls + the K visible tokens in the order of ids_shuffle. -> [N, L, p*p*C]"""
        x = self.decoder_embed(latent)                                      # [N, 1+K, Dd]
        n, _, d = x.shape
        tokens = torch.cat([x[:, 1:], self.mask_token.expand(n, self.num_patches + 1 - x.shape[1], -1)], dim=1)
        tokens = torch.gather(tokens, 1, ids_restore.unsqueeze(-1).expand(-1, -1, d))   # every token at its patch
        return self.decode_tokens(torch.cat([x[:, :1], tokens], dim=1))

    def spatial_loss(self, imgs, pred, mask):
        return masked_patch_mse(pred, self.patchify(imgs), mask, self.norm_pix_loss)

    # ------------------------------------------------------------------ frequency branch
    def low_pass(self, imgs):
        """High-frequency masking of the input: the low-pass image. [N, C, H, W] float32"""
        return filter_spectrum(imgs, self.freq_keep)

    def forward_freq_encoder(self, low_imgs):
        """Encode all patches of the low-pass image with the shared blocks. -> [N, 1+L, D]"""
        x = self.patch_embed(low_imgs.to(self.patch_embed.proj.weight.dtype)) + self.pos_embed[:, 1:]
        cls = (self.freq_cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward_freq_decoder(self, latent):
        """Predict the full image from the patch tokens. -> [N, C, H, W]"""
        x = self.decoder_embed(latent[:, 1:])                               # shared with the spatial decoder
        x = self.freq_decoder_pred(self.freq_decoder_norm(self.freq_decoder(x)))
        return self.unpatchify(x)

    def frequency_loss(self, imgs, freq_pred):
        """The --freq_loss distance between the prediction's spectrum and the grey input's, over the masked
        (high-frequency) bins only (util.losses.FREQ_LOSSES)."""
        return FREQ_LOSSES[self.freq_loss_name](freq_pred, to_gray(imgs), self.freq_scored, self.ffl_alpha)

    # ------------------------------------------------------------------ all pretext tasks
    def pretext_losses(self, imgs, mask):
        """Every pretext task's loss. -> (losses {name: 0-d tensor}, outputs {name: tensor}).

        The one place a pretext task is added: its loss here, its weight in `loss_weights`; training sums,
        logs (log.txt, TensorBoard) and shows every loss named here.
        """
        latent, ids_restore = self.forward_encoder(imgs, mask)
        pred = self.forward_decoder(latent, ids_restore)
        low = self.low_pass(imgs)
        freq_pred = self.forward_freq_decoder(self.forward_freq_encoder(low))
        losses = dict(spat_loss=self.spatial_loss(imgs, pred, mask), freq_loss=self.frequency_loss(imgs, freq_pred))
        return losses, dict(pred=pred, mask=mask, low=low, freq_pred=freq_pred)

    @property
    def loss_weights(self):
        """{loss name: weight in the training loss}."""
        return dict(spat_loss=1.0, freq_loss=self.lamda)

    def forward(self, imgs, mask=None):
        """imgs: [N, C, H, W] normalised; mask: [N, L] bool, True = removed (None: random on the device).

        Returns (loss, outputs): loss = sum of weight x loss over `pretext_losses`; outputs holds `losses`
        (that dict), each loss under its own name too, pred [N, L, p*p*C], mask, low and freq_pred [N, C, H, W].
        """
        if mask is None:
            mask = self.random_masks(imgs.shape[0], imgs.device)
        losses, out = self.pretext_losses(imgs, mask)
        weights = self.loss_weights
        loss = sum(weights[k] * v for k, v in losses.items())
        return loss, dict(losses, losses=losses, **out)

    @staticmethod
    def checkpoint_entries(config):
        """What a checkpoint file holds beside the weights, for this model read from a Hub-format folder."""
        return dict(args=dict(model=config['model'], **{a: config[k] for a, k in TRAINING_ARGS.items()}))


# The frequency decoder of checkpoints written before it shared decoder_embed (own embedding, biased Linear):
# they cannot continue training, and their frequency decoder is not used elsewhere.
OLD_FREQ_DECODER_KEYS = ('freq_decoder_embed.', 'freq_decoder_fc.')


def old_freq_decoder_note(state):
    """A one-line note when `state` holds the older frequency decoder, else None."""
    if any(k.startswith(OLD_FREQ_DECODER_KEYS) for k in state):
        return ('its frequency decoder has the older layout (own freq_decoder_embed, biased freq_decoder_fc), '
                'not the reference\'s (shared decoder_embed, bias-free freq_decoder)')
    return None


# ---------------------------------------------------------------------- factories (looked up by --model)
# Encoder and spatial-decoder sizes; models_vit builds its detectors from the same table.
# The patch size of a model is ARCHS[...]['patch_size']; arch_of finds the entry from either stage's name.
ARCHS = {
    # micro: a CPU size for the tests and the demo (64-px faces, 8x8 patches), not a published model
    'vit_micro_patch8': dict(patch_size=8, embed_dim=128, depth=6, num_heads=4,
                             decoder_embed_dim=96, decoder_depth=2, decoder_num_heads=4),
    'vit_tiny_patch16': dict(patch_size=16, embed_dim=192, depth=12, num_heads=3,
                             decoder_embed_dim=128, decoder_depth=4, decoder_num_heads=4),
    'vit_small_patch16': dict(patch_size=16, embed_dim=384, depth=12, num_heads=6,
                              decoder_embed_dim=256, decoder_depth=4, decoder_num_heads=8),
    'vit_base_patch16': dict(patch_size=16, embed_dim=768, depth=12, num_heads=12,
                             decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16),
    'vit_large_patch16': dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16,
                              decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16),
    'vit_huge_patch14': dict(patch_size=14, embed_dim=1280, depth=32, num_heads=16,
                             decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16),
}


def arch_of(name):
    """The ARCHS entry of 'mae_vit_base_patch16' or 'vit_base_patch16'; KeyError for another name."""
    return ARCHS[name[len('mae_'):] if name.startswith('mae_') else name]


def factory(cls, arch, name):
    """A factory `name(**kwargs)` building `cls` with the sizes of ARCHS[arch] (kwargs win)."""
    def build(**kwargs):
        return cls(**{**ARCHS[arch], 'mlp_ratio': 4, 'norm_layer': partial(nn.LayerNorm, eps=1e-6), **kwargs})
    build.__name__ = build.__qualname__ = name
    build.__doc__ = f'{cls.__name__} with the {arch} encoder and its spatial decoder.'
    return build


MODELS = {f'mae_{arch}': factory(MaskedImageFrequencyAutoencoder, arch, f'mae_{arch}') for arch in ARCHS}
mae_vit_micro_patch8 = MODELS['mae_vit_micro_patch8']
mae_vit_tiny_patch16 = MODELS['mae_vit_tiny_patch16']
mae_vit_small_patch16 = MODELS['mae_vit_small_patch16']
mae_vit_base_patch16 = MODELS['mae_vit_base_patch16']
mae_vit_large_patch16 = MODELS['mae_vit_large_patch16']
mae_vit_huge_patch14 = MODELS['mae_vit_huge_patch14']


# ---------------------------------------------------------------------- building and loading
# main_pretrain.py's flag -> the __init__ argument it sets; a Hub config.json holds the latter
TRAINING_ARGS = dict(input_size='img_size', norm_pix_loss='norm_pix_loss', mask_ratio='mask_ratio',
                     mask_radius='mask_radius', freq_loss='freq_loss', ffl_alpha='ffl_alpha', lamda='lamda')


def build_autoencoder(args):
    """The autoencoder main_pretrain.py's arguments describe: a Namespace or a checkpoint's args dict (the
    __init__ defaults fill what it lacks; runs that predate --freq_loss trained with 'ffl')."""
    args = dict(vars(args) if not isinstance(args, dict) else args)
    args.setdefault('freq_loss', 'ffl')
    return MODELS[args['model']](**{k: args[a] for a, k in TRAINING_ARGS.items() if a in args})


def _read(path):
    try:
        ckpt = hub.load_checkpoint(path)                      # a file, a Hub-format folder or a Hub id
        return ckpt, checkpoint.state_dict_of(ckpt)
    except ValueError as e:
        raise ValueError(str(e) if str(path) in str(e) else f'{path}: {e}') from None


def load_pretrained(model, path):
    """Initialise `model` from an original MAE (encoder only or full) or a MIFAE checkpoint; what the file
    lacks starts fresh (so does a frequency decoder of the older layout), and one line says what. The fixed
    sin-cos embeddings stay the file's (the positions its weights learnt with), rebuilt for another grid.
    ValueError naming the file and the tensors whose shapes differ."""
    _, state = _read(path)
    own = model.state_dict()
    note = old_freq_decoder_note(state)
    if note:
        print(f'{path}: {note}: the frequency decoder starts fresh')
    fixed = {k for k in ('pos_embed', 'decoder_pos_embed') if k in state and state[k].shape != own[k].shape}
    mismatched = checkpoint.shape_mismatches(state, own, [k for k in state if k in own and k not in fixed],
                                             target='this model')
    if mismatched:
        raise ValueError(checkpoint.shape_report(path, mismatched, f'{type(model).__name__} (is --model right?)'))
    state = {k: v for k, v in state.items() if k in own and k not in fixed}
    missing = sorted(set(own) - set(state) - {'pos_embed', 'decoder_pos_embed'})
    model.load_state_dict(state, strict=False)
    fresh = sorted({k.split('.')[0] for k in missing})
    print(f'Initialised from {path}: {len(state)} tensors loaded; freshly initialised: {", ".join(fresh) or "none"}')


def load_autoencoder(path, device='cpu'):
    """Rebuild a pre-trained autoencoder from its checkpoint (file, Hub-format folder or Hub id) alone, in eval
    mode on `device`. Every tensor must fit, except a frequency decoder of the older layout, which stays fresh:
    model.old_freq_decoder then holds old_freq_decoder_note's line (else None).
    ValueError naming the file when it is a detector's, records no MIFAE model, or does not fit."""
    ckpt, state = _read(path)
    if 'detector' in ckpt or any(k.startswith('head.') for k in state):
        raise ValueError(f'{path}: a fine-tuning (detector) checkpoint, not a pre-training one')
    args = checkpoint.args_of(ckpt)
    if args.get('model') not in MODELS:
        raise ValueError(f'{path}: checkpoint has no training arguments naming a MIFAE model (args.model); '
                         f'is it a pre-training checkpoint from main_pretrain.py?')
    model = build_autoencoder(args)
    own = model.state_dict()
    model.old_freq_decoder = old_freq_decoder_note(state)
    wrong = checkpoint.shape_mismatches(state, own, target=args['model'])
    missing = sorted(set(own) - set(state) - ({k for k in own if k.startswith('freq_decoder')}
                                              if model.old_freq_decoder else set()))
    if wrong or missing:
        raise ValueError(f'{path}: does not match {args["model"]} at input {model.img_size}: '
                         + (f'{len(wrong)} shape(s) differ, e.g. {wrong[0]}' if wrong else
                            f'{len(missing)} tensor(s) missing, e.g. {missing[0]}'))
    model.load_state_dict(state, strict=False)
    return model.to(device).eval()
