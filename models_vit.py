"""Stage 2: the MIFAE deepfake detector -- a ViT classifier on the pre-trained encoder, with the frozen
spatial decoder reconstructing the input from the classifier's tokens.

The encoder's names match models_mae's (patch_embed, cls_token, pos_embed, blocks, norm), so a
pre-training checkpoint (MIFAE or original MAE) loads directly; pos_embed is learnable here, initialised
from the checkpoint's and resized when the input size differs. The decoder (decoder_embed,
decoder_pos_embed, decoder_blocks, decoder_norm, decoder_pred) is the pre-training spatial decoder and
is models_mae's SpatialDecoder, run on cls + all L tokens. It is always frozen; by default only the
last block, the final norm and the head train, and the frozen prefix runs without autograd and stays
in eval mode (no drop-path), so its weights and its outputs never change.
"""
from functools import partial

import torch
import torch.nn as nn
from timm.layers import PatchEmbed, trunc_normal_
from timm.models.vision_transformer import Block

import util.checkpoint as checkpoint
import util.hub as hub
from models_mae import ARCHS, MaskedImageFrequencyAutoencoder, SpatialDecoder, arch_of, factory
from util.datasets import IMAGENET_MEAN, IMAGENET_STD
from util.losses import denormalize_patches, normalize_patches
from util.pos_embed import resize_pos_embed, sincos_pos_embed_2d

DECODER_PREFIXES = ('decoder_embed.', 'decoder_blocks.', 'decoder_norm.', 'decoder_pred.')
HEAD_PREFIXES = ('head.', 'fc_norm.')


class MIFAEDetector(SpatialDecoder):
    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, depth=12, num_heads=12,
                 decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16, mlp_ratio=4.,
                 norm_layer=partial(nn.LayerNorm, eps=1e-6), num_classes=2, global_pool=False,
                 drop_rate=0., drop_path_rate=0., norm_pix=False, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 crop_pct=None, head_init_std=2e-5):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f'img_size {img_size} is not divisible by the patch size {patch_size}')
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.num_classes, self.global_pool, self.norm_pix = num_classes, global_pool, norm_pix
        self.mean, self.std = tuple(mean), tuple(std)
        self.crop_pct = crop_pct                               # evaluation centre crop (None: whole image)
        self.head_init_std = head_init_std
        grid = img_size // patch_size

        # ---- encoder (models_mae names)
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.from_numpy(sincos_pos_embed_2d(embed_dim, grid, True))[None])
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer, drop_path=dpr[i])
            for i in range(depth)])
        self.norm = norm_layer(embed_dim)                      # tokens for the decoder (and the cls head)
        self.fc_norm = norm_layer(embed_dim) if global_pool else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes)

        # ---- frozen spatial decoder (models_mae's; no mask token: every patch has its token)
        self.build_spatial_decoder(embed_dim, decoder_embed_dim, decoder_depth, decoder_num_heads, mlp_ratio,
                                   norm_layer, patch_size, in_chans, grid)

        self.first_trainable = 0                               # blocks before it are frozen (see freeze)
        self.initialize_weights()
        self.freeze(depth, full=True)                          # until told otherwise: encoder trains, decoder frozen

    def initialize_weights(self):
        w = self.patch_embed.proj.weight.data
        torch.nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        torch.nn.init.normal_(self.cls_token, std=.02)
        self.apply(MaskedImageFrequencyAutoencoder.init_weights)
        trunc_normal_(self.head.weight, std=self.head_init_std)

    # ------------------------------------------------------------------ what trains
    def freeze(self, trainable_blocks=1, full=False):
        """Train the last `trainable_blocks` blocks, norm, fc_norm and head (or the whole encoder with
        `full`); everything else, the decoder always, gets requires_grad False."""
        depth = len(self.blocks)
        if not full and not 0 <= trainable_blocks <= depth:
            raise ValueError(f'trainable_blocks must lie in [0, {depth}], got {trainable_blocks}')
        self.first_trainable = 0 if full else depth - trainable_blocks
        for name, p in self.named_parameters():
            if name.startswith(DECODER_PREFIXES):
                p.requires_grad_(False)
            elif full or name.startswith(('norm.',) + HEAD_PREFIXES):
                p.requires_grad_(True)
            elif name.startswith('blocks.'):
                p.requires_grad_(int(name.split('.')[1]) >= self.first_trainable)
            else:                                              # patch_embed, cls_token, pos_embed
                p.requires_grad_(False)
        self.train(self.training)
        return self

    def frozen_modules(self):
        mods = [self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred]
        if self.first_trainable > 0:
            mods += [self.patch_embed] + list(self.blocks[:self.first_trainable])
        return mods

    def train(self, mode=True):
        """Frozen modules stay in eval mode: no drop-path or dropout where nothing learns."""
        super().train(mode)
        if mode:
            for m in self.frozen_modules():
                m.eval()
        return self

    # ------------------------------------------------------------------ patches (models_mae's)
    patchify = MaskedImageFrequencyAutoencoder.patchify            # [N, C, H, W] -> [N, L, p*p*C]
    unpatchify = MaskedImageFrequencyAutoencoder.unpatchify        # [N, L, p*p*C] -> [N, C, H, W]

    # ------------------------------------------------------------------ encoder
    def _embed_and_frozen_blocks(self, x):
        x = self.patch_embed(x) + self.pos_embed[:, 1:]                    # [N, L, D]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)                                     # [N, 1+L, D]
        for blk in self.blocks[:self.first_trainable]:
            x = blk(x)
        return x

    def forward_features(self, x):
        """All tokens after the last block, before the final norm. [N, C, H, W] -> [N, 1+L, D]"""
        if self.first_trainable > 0:
            with torch.no_grad():                                          # frozen prefix: no activations kept
                x = self._embed_and_frozen_blocks(x)
        else:
            x = self._embed_and_frozen_blocks(x)
        for blk in self.blocks[self.first_trainable:]:
            x = blk(x)
        return x

    def forward_tokens(self, x):
        """The classifier's tokens, cls + all L patches in patch order, as the decoder reads them. -> [N, 1+L, D]"""
        return self.norm(self.forward_features(x))

    def forward_head(self, feats, tokens=None):
        """Logits [N, num_classes] from the cls token (after norm) or the mean patch token (fc_norm)."""
        if self.global_pool:
            x = self.fc_norm(feats[:, 1:].mean(dim=1))
        else:
            x = (tokens if tokens is not None else self.norm(feats))[:, 0]
        return self.head(self.head_drop(x))

    # ------------------------------------------------------------------ frozen decoder (models_mae's)
    def forward_decoder(self, tokens):
        """The classifier's tokens, cls + all L in patch order [N, 1+L, D] -> every patch's pixels [N, L, p*p*C]."""
        return self.decode_tokens(self.decoder_embed(tokens))

    # ------------------------------------------------------------------ both
    def forward(self, x, return_recon=False):
        """x: [N, C, H, W] normalised. Logits [N, num_classes]; with return_recon also the decoder's
        patch predictions [N, L, p*p*C] (normalised pixels, or per-patch normalised with norm_pix)."""
        feats = self.forward_features(x)
        if not return_recon:
            return self.forward_head(feats)
        tokens = self.norm(feats)
        return self.forward_head(feats, tokens), self.forward_decoder(tokens)

    def fake_prob(self, logits):
        """P(label 1 = fake). [N, 2] -> [N] float32"""
        return logits.float().softmax(dim=-1)[:, 1]

    def checkpoint_entries(self, config):
        """What a fine-tuning checkpoint holds beside the weights, for this model read from a Hub-format folder."""
        meta = detector_meta(self, config['model'], threshold=config.get('threshold'),
                             **{k: config[k] for k in hub.DETECTOR_EXTRAS if k in config})
        return dict(detector=meta, args=dict(model=config['model'], input_size=self.img_size))

    # ------------------------------------------------------------------ reconstruction targets / images
    def recon_target(self, imgs):
        """What the decoder's output is compared with: the input's patches (per-patch normalised with norm_pix)."""
        target = self.patchify(imgs.float())
        return normalize_patches(target) if self.norm_pix else target

    def recon_images(self, imgs, pred):
        """Decoder output as an image in the input's normalised space ([N, C, H, W]); with norm_pix each
        patch is de-normalised with the input patch's own mean and variance."""
        pred = pred.float()
        if self.norm_pix:
            pred = denormalize_patches(pred, self.patchify(imgs.float()))
        return self.unpatchify(pred)


# ---------------------------------------------------------------------- factories (looked up by --model)
# The sizes come from models_mae.ARCHS, so a detector always matches its pre-training checkpoint.
MODELS = {arch: factory(MIFAEDetector, arch, arch) for arch in ARCHS}
vit_micro_patch8 = MODELS['vit_micro_patch8']
vit_tiny_patch16 = MODELS['vit_tiny_patch16']
vit_small_patch16 = MODELS['vit_small_patch16']
vit_base_patch16 = MODELS['vit_base_patch16']
vit_large_patch16 = MODELS['vit_large_patch16']
vit_huge_patch14 = MODELS['vit_huge_patch14']


def resolve_model_name(name):
    """'vit_base_patch16' or the pre-training name 'mae_vit_base_patch16' -> 'vit_base_patch16'."""
    key = name[len('mae_'):] if name.startswith('mae_') else name
    if key not in MODELS:
        raise ValueError(f'--model {name} is unknown; choose one of {", ".join(MODELS)} '
                         f'(or their mae_* pre-training names)')
    return key


def patch_size_of(name):
    """16 for 'vit_base_patch16' (no model is built)."""
    return arch_of(resolve_model_name(name))['patch_size']


def depth_of(name):
    """Number of encoder blocks of a model name, 12 for 'vit_base_patch16' (no model is built)."""
    return ARCHS[resolve_model_name(name)]['depth']


# ---------------------------------------------------------------------- loading
def load_pretrained(model, path, decoder_path=None, model_name='the model'):
    """Initialise encoder and frozen decoder from a pre-training checkpoint (MIFAE or original MAE).

    The encoder's pos_embed is resized to this input size; the fixed sin-cos decoder_pos_embed is the
    decoder file's (the positions the decoder learnt with), rebuilt only for another patch grid;
    mask_token and the frequency branch are ignored; a checkpoint's head is loaded only when
    it is a fine-tuning checkpoint of the same kind. Raises ValueError naming the file and the keys whose
    shapes differ, or the missing encoder keys. Returns dict(decoder_loaded, norm_pix_loss, args):
    norm_pix_loss as recorded by the file the decoder comes from, args those of `path` (a dict).
    """
    def read(p):
        try:
            ckpt = hub.load_checkpoint(p)                      # a file, a Hub-format folder or a Hub id
            return ckpt, checkpoint.state_dict_of(ckpt)
        except ValueError as e:
            raise ValueError(f'{p}: {e}' if str(p) not in str(e) else str(e)) from None

    ckpt, state = read(path)
    own = model.state_dict()
    state = dict(state)
    if 'pos_embed' in state and state['pos_embed'].ndim == 3 and 'pos_embed' in own:
        grid = model.img_size // model.patch_size
        if (state['pos_embed'].shape[1] - 1 != grid * grid
                and state['pos_embed'].shape[-1] == own['pos_embed'].shape[-1]):
            old = int(round((state['pos_embed'].shape[1] - 1) ** .5))
            state['pos_embed'] = resize_pos_embed(state['pos_embed'], grid)
            print(f'{path}: pos_embed resized from a {old}x{old} to a {grid}x{grid} patch grid')

    def other_model():            # the model the file's training arguments name, when it is not this one
        saved = checkpoint.args_of(ckpt).get('model')
        try:
            saved = resolve_model_name(str(saved)) if saved else None
        except ValueError:
            return None
        if saved and saved != model_name:
            return (f'{path} holds a {saved} (its training arguments), not {model_name}: leave --model out, '
                    f'or pass --model {saved}')

    enc_keys = [k for k in own if not k.startswith(DECODER_PREFIXES + HEAD_PREFIXES) and k != 'decoder_pos_embed']
    missing = [k for k in enc_keys if k not in state]
    if (missing or checkpoint.shape_mismatches(state, own, [k for k in enc_keys if k in state])) and other_model():
        raise ValueError(other_model())
    if missing:
        raise ValueError(f'{path}: not a ViT/MAE checkpoint for {model_name}: {len(missing)} encoder key(s) missing, '
                         f'e.g. {", ".join(missing[:3])}')
    load_keys = list(enc_keys)
    if 'detector' in ckpt:                                     # a fine-tuning checkpoint: its head too
        load_keys += [k for k in own if k.startswith(HEAD_PREFIXES) and k in state]

    dec_ckpt, dec_state, dec_src = ckpt, state, path
    if decoder_path:
        dec_ckpt, dec_state = read(decoder_path)
        dec_src = decoder_path
    dec_keys = [k for k in own if k.startswith(DECODER_PREFIXES)]
    decoder_loaded = all(k in dec_state for k in dec_keys)

    mismatched = checkpoint.shape_mismatches(state, own, load_keys, target=model_name)
    if decoder_loaded:
        mismatched += checkpoint.shape_mismatches(dec_state, own, dec_keys, source=dec_src, target=model_name)
    if mismatched:
        raise ValueError(checkpoint.shape_report(path, mismatched, f'{model_name} (is --model right?)'))

    new = {k: state[k] for k in load_keys}
    if decoder_loaded:
        new.update({k: dec_state[k] for k in dec_keys})
        if tuple(dec_state.get('decoder_pos_embed', torch.empty(0)).shape) == tuple(own['decoder_pos_embed'].shape):
            new['decoder_pos_embed'] = dec_state['decoder_pos_embed']
    model.load_state_dict(new, strict=False)
    fresh = sorted({k.split('.')[0] for k in own if k not in new and k != 'decoder_pos_embed'})
    print(f'Initialised from {path}{f" (decoder from {decoder_path})" if decoder_path else ""}: '
          f'{len(new)} tensors loaded; fresh: {", ".join(fresh) or "none"}')
    return dict(decoder_loaded=decoder_loaded, norm_pix_loss=checkpoint.norm_pix_of(dec_ckpt),
                args=checkpoint.args_of(ckpt))


def detector_meta(model, model_name, **extra):
    """What a fine-tuning checkpoint carries so that predict.py can rebuild the model with no flags."""
    meta = dict(kind='mifae_detector', model=resolve_model_name(model_name), input_size=model.img_size,
                patch_size=model.patch_size, global_pool=model.global_pool, num_classes=model.num_classes,
                norm_pix=bool(model.norm_pix), mean=list(model.mean), std=list(model.std),
                eval_crop_pct=model.crop_pct)
    meta.update(extra)
    return meta


def build_detector(meta, **overrides):
    kw = dict(img_size=meta['input_size'], global_pool=meta['global_pool'], num_classes=meta['num_classes'],
              norm_pix=meta['norm_pix'], mean=meta['mean'], std=meta['std'],
              crop_pct=meta.get('eval_crop_pct'))          # older checkpoints: the whole image
    kw.update(overrides)
    return MODELS[resolve_model_name(meta['model'])](**kw)


def load_detector(path, device='cpu'):
    """Rebuild a fine-tuned detector from its checkpoint (or Hub-format folder, or Hub id) alone.
    -> (model in eval mode on `device`, meta)

    ValueError naming the file when it is not a fine-tuning checkpoint or its tensors do not fit."""
    ckpt = hub.load_checkpoint(path)
    meta = ckpt.get('detector')
    if not isinstance(meta, dict):
        hint = ''
        if 'mask_ratio' in checkpoint.args_of(ckpt):
            hint = ' It is a pre-training checkpoint: fine-tune it first with main_finetune.py --finetune.'
        raise ValueError(f'{path}: not a fine-tuning checkpoint of main_finetune.py (no "detector" entry).{hint}')
    model = build_detector(meta)
    try:
        state = checkpoint.state_dict_of(ckpt)
    except ValueError as e:
        raise ValueError(f'{path}: {e}') from None
    own = model.state_dict()
    mismatched = checkpoint.shape_mismatches(state, own, target=meta['model'])
    if mismatched:
        raise ValueError(checkpoint.shape_report(path, mismatched, meta['model']))
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f'{path}: state dict does not fit {meta["model"]}: missing {missing[:3]}, '
                         f'unexpected {unexpected[:3]}')
    model.load_state_dict(state)
    return model.to(device).eval(), meta
