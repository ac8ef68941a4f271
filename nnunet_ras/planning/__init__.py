from nnunet_ras.planning.planner import nnUNetPlannerRAS

__all__ = ['nnUNetPlannerRAS']
