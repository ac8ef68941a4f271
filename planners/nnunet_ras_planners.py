"""Re-exports the plugin's planners (the classes live in ``nnunet_ras.planning``)."""
from nnunet_ras.planning import nnUNetPlannerRAS  # noqa: F401
