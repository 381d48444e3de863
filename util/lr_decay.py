"""Layer-wise learning-rate decay (BEiT / MAE fine-tuning): layer i of a depth-d ViT gets
lr x decay^(d + 1 - i), with the embeddings as layer 0 and norm / head as layer d + 1.

Only parameters with requires_grad are grouped, so frozen parts never reach the optimizer.
"""


def layer_id_for(name, num_layers):
    """0 for patch_embed / cls_token / pos_embed, i + 1 for blocks.i, num_layers + 1 for the rest."""
    if name in ('cls_token', 'pos_embed') or name.startswith('patch_embed'):
        return 0
    if name.startswith('blocks.'):
        return int(name.split('.')[1]) + 1
    return num_layers + 1


def param_groups_lrd(model, weight_decay=0.05, no_weight_decay=('cls_token', 'pos_embed'), layer_decay=0.75):
    """AdamW parameter groups keyed by (layer, decay / no decay), each with an 'lr_scale' that
    util.lr_sched.adjust_learning_rate multiplies into the scheduled lr. Biases, norms and 1-D tensors get
    no weight decay, nor do the names in `no_weight_decay`."""
    num_layers = len(model.blocks)
    scales = [layer_decay ** (num_layers + 1 - i) for i in range(num_layers + 2)]
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim == 1 or name.endswith('.bias') or name in no_weight_decay
        layer = layer_id_for(name, num_layers)
        key = f'layer_{layer}_{"no_decay" if no_decay else "decay"}'
        if key not in groups:
            groups[key] = dict(params=[], param_names=[], weight_decay=0. if no_decay else weight_decay,
                               lr_scale=scales[layer])
        groups[key]['params'].append(p)
        groups[key]['param_names'].append(name)
    return list(groups.values())
