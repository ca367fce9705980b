"""Deep learning: the paper's U-net, its losses, export and whole-slice inference.

Importing this package imports torch (``pip install mrfengine[nn]``);
``import mrfengine`` alone does not.

::

    from mrfengine.nn import get_config, save_model, load_model, predict_volume
    config = get_config("MSE-5")                 # Table 1 of Hermann et al. 2021
    net = config.build(seed=0)                   # UNet2d(35 -> 5), He weights
    ...                                          # training: mrfengine train
    save_model(net, "mse5.pt", config=config, normalisation=norm, sequence=seq)
    model = load_model("mse5.pt", expect_channels=35, expect_sequence=seq)
    maps = predict_volume(mrf_zcyx, model)       # {"T1": (Z, Y, X) ms, ...}
"""

from ._triton_loss import HAS_TRITON, fused_loss, triton_status
from .configs import CONFIGS, LOSS_KINDS, NetworkConfig, OutputSpec, get_config, paper_outputs
from .artifact import LoadedModel, load_model, save_model
from .card import FORMATS, ModelCard, card_path, check_card, read_card
from .inference import PRECISIONS, InputScaling, Prediction, input_scaling, pad_amounts, predict_volume, run_network
from .losses import elementwise_loss, log_cosh, multi_output_loss, reference_fused_loss, soft_dice_loss
from .normalisation import Normalisation, fit_normalisation
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .targets import to_network_units, to_physical_units
from .train import evaluate_batch, make_optimizer, train_step
from .unet import UNet2d, init_weights

__all__ = [
    "UNet2d",
    "init_weights",
    "NetworkConfig",
    "OutputSpec",
    "CONFIGS",
    "LOSS_KINDS",
    "get_config",
    "paper_outputs",
    "log_cosh",
    "elementwise_loss",
    "reference_fused_loss",
    "soft_dice_loss",
    "multi_output_loss",
    "fused_loss",
    "HAS_TRITON",
    "triton_status",
    "Normalisation",
    "fit_normalisation",
    "ModelCard",
    "LoadedModel",
    "FORMATS",
    "card_path",
    "save_model",
    "load_model",
    "read_card",
    "check_card",
    "PRECISIONS",
    "predict_volume",
    "run_network",
    "input_scaling",
    "InputScaling",
    "Prediction",
    "pad_amounts",
    "to_network_units",
    "to_physical_units",
    "make_optimizer",
    "train_step",
    "evaluate_batch",
    "Checkpoint",
    "save_checkpoint",
    "load_checkpoint",
]
