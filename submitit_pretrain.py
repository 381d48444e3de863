"""Submit MIFAE pre-training (main_pretrain.py) to Slurm with submitit; requeued and resumed on pre-emption.

    python submitit_pretrain.py --job_dir /shared/mifae/%j --nodes 8 --use_volta32 --batch_size 64 \
        --model mae_vit_base_patch16 --norm_pix_loss --mask_ratio 0.75 --mask_radius 16 \
        --epochs 800 --warmup_epochs 40 --blr 1.5e-4 --weight_decay 0.05 --data_path /shared/faces.csv

Every flag of main_pretrain.py plus the Slurm flags (--help lists both); --dry_run checks a command.
"""
from util import slurm


def main(argv=None):
    return slurm.main('main_pretrain', argv, prog='submitit_pretrain.py',
                      description='Submit MIFAE pre-training (main_pretrain.py) to Slurm with submitit')


if __name__ == '__main__':
    main()
