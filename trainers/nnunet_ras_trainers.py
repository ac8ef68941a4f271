"""Re-exports the plugin's trainers so that nnU-Net's trainer lookup (``nnUNet_extTrainer``) finds them by name."""
from nnunet_ras.training import *  # noqa: F401,F403
from nnunet_ras.training import __all__  # noqa: F401
