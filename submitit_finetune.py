"""Submit stage-2 fine-tuning (main_finetune.py) to Slurm with submitit; requeued and resumed on pre-emption.

    python submitit_finetune.py --job_dir /shared/mifae_ft/%j --nodes 1 --batch_size 32 \
        --finetune /shared/mifae/checkpoint-last.pth --train_manifest ffpp_train.csv --val_manifest ffpp_val.csv

Every flag of main_finetune.py plus the Slurm flags (--help lists both); --dry_run checks a command.
"""
from util import slurm


def main(argv=None):
    return slurm.main('main_finetune', argv, prog='submitit_finetune.py',
                      description='Submit MIFAE fine-tuning (main_finetune.py) to Slurm with submitit')


if __name__ == '__main__':
    main()
