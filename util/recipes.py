"""Stage 2's recipes: one table of values for the flags a recipe governs, filled in after parsing.

Rule: every recipe flag defaults to None in main_finetune.py's parser; `apply_recipe` then gives each flag still
None the --recipe's value. A flag typed on the command line or set in code (`args.lr = ...` after parse_args)
is not None and wins, so both take one path. A recipe value of None (e.g. clip_grad) means "off".
"""
from functools import partial

import util.misc as misc

error = partial(misc.usage_error, 'main_finetune.py')

# The reference's stage-2 values (partial_finetuning_with_reconstruction.py's flags, util/datasets.py's
# build_transform, the head's trunc_normal_(std=2e-5), Recon_Loss.DualReconLoss(lambda_fake=1.0)).
REFERENCE_RECIPE = dict(
    epochs=100, batch_size=64, accum_iter=1, blr=5e-4, layer_decay=0.65, warmup_epochs=5, min_lr=1e-6,
    weight_decay=0.05, clip_grad=None, drop_path=0.1, smoothing=0.1,
    mixup=0.8, cutmix=1.0, cutmix_minmax=None, mixup_prob=1.0, mixup_switch_prob=0.5, mixup_mode='batch',
    aa='rand-m9-mstd0.5-inc1', reprob=0.25, remode='pixel', recount=1, min_crop_scale=0.08,
    eval_crop_pct=224 / 256, balance=False, head_init_std=2e-5, recon_weight=0.5, recon_lambda=1.0,
    trainable_blocks=1, full_finetune=False, global_pool=False)
RECIPES = {
    'reference': REFERENCE_RECIPE,
    'light': dict(REFERENCE_RECIPE, epochs=10, blr=1e-3, layer_decay=0.75, warmup_epochs=1, mixup=0, cutmix=0,
                  aa='none', reprob=0, min_crop_scale=0.5, eval_crop_pct=0, balance=True, head_init_std=0.02,
                  recon_lambda=0.1),
}
RECIPE_FLAGS = tuple(REFERENCE_RECIPE)


def apply_recipe(args):
    """Give every recipe flag left at None the value of args.recipe. -> (the effective recipe {flag: value},
    the set of flags that took the recipe's value)"""
    recipe = RECIPES[args.recipe]
    filled = {k for k in RECIPE_FLAGS if getattr(args, k, None) is None}
    for k in filled:
        setattr(args, k, recipe[k])
    return {k: getattr(args, k) for k in RECIPE_FLAGS}, filled


def check_pseudo_fake_args(args, from_recipe):
    """One-line errors for --pseudo_fakes flags that cannot work together with the others. Mixup / cutmix that
    came from the --recipe (`from_recipe`: the flags recipes.apply_recipe filled) are turned off (a face that
    cannot be self-blended leaves an odd batch; SBI trains without them); given explicitly, they are refused."""
    if args.pseudo_fakes == 'none':
        if args.pseudo_fakes_ratio is not None:
            raise error('--pseudo_fakes_ratio needs --pseudo_fakes sbi')
        return
    if args.pseudo_fakes_ratio is not None and not 0 < args.pseudo_fakes_ratio <= 1:
        raise error(f'--pseudo_fakes_ratio {args.pseudo_fakes_ratio} must lie in (0, 1]')
    if args.batch_size < 2 or args.batch_size % 2:
        raise error(f'--pseudo_fakes sbi needs an even --batch_size (real + fake pairs), got {args.batch_size}')
    if args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None:
        if any(k not in from_recipe for k in ('mixup', 'cutmix', 'cutmix_minmax')):
            raise error('--pseudo_fakes sbi does not combine with --mixup / --cutmix '
                        '(a face that cannot be self-blended leaves an odd batch)')
        args.mixup, args.cutmix, args.cutmix_minmax = 0.0, 0.0, None
        if misc.is_main_process():
            print(f'main_finetune.py: note: --pseudo_fakes sbi turns off the --recipe {args.recipe} mixup / cutmix',
                  flush=True)
