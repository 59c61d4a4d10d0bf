"""DeepLab v1 LargeFOV (VGG-16, output stride 8) + dense CRF on PASCAL VOC 2012.

  python -m segjax.data.prepare --dataset voc --manual_dir ~/data/voc --config aug
  python train.py --config configs/deeplabv1_voc.py:aug --workdir workdirs/deeplabv1_voc
  python eval.py --workdir workdirs/deeplabv1_voc          # with the CRF (config.eval.crf)
  python eval.py --workdir workdirs/deeplabv1_voc --nocrf  # the network alone

The paper's setting: 321x321 crops, batch 20, SGD momentum 0.9, weight decay 5e-4,
base learning rate 1e-3 (segjax uses poly decay), 6000 steps; at test time the fully
connected CRF post-processes the probabilities with the parameters of the authors'
released script (configs/common.py's DEEPLAB_CRF["v1"]: 10 mean-field iterations).
Unlike the paper, the network trains from scratch here (no ImageNet initialisation).
"""

from configs import common


def get_config(arg: str | None = None):
    return common.deeplab_voc("v1", arg)
