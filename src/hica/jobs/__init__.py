"""Jobs: the long-running runs behind ``hica pretrain`` (stage 1) and ``hica finetune`` (stage 2) that write
an encoder or classifier folder with its summary and model card. They sit above ``hica.eval``."""
