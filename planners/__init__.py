"""Re-export of the plugin's planners (installed as ``nnunet_ras.ext.planners``).

nnU-Net looks planners up by name only inside nnunetv2, so run them with ``nnunet-ras plan_and_preprocess``.
"""
