"""The folder nnU-Net scans for the plugin's trainers: ``export nnUNet_extTrainer="$(nnunet-ras trainer-path)"``.

Installed as ``nnunet_ras.ext.trainers``; it only re-exports, the classes live in ``nnunet_ras.training``.
"""
