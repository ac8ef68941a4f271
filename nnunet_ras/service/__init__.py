"""The contouring service: ``nnunet-ras serve`` (FastAPI on uvicorn, a web page with NiiVue), its job queue (huey,
SQLite or Redis), ``nnunet-ras worker`` and the DICOM node (``serve --dicom_port``, ``nnunet-ras dicom-node``).

Layers, top down: ``cli`` -> ``app`` (HTTP) -> ``dicom_node`` (pynetdicom SCP / SCU, ``rules``) -> ``jobs`` (queue,
workers, heartbeat) -> ``uploads`` / ``models`` / ``store`` (job table, users) -> ``nnunet_ras.dicom.predict``. A contouring web system of this kind (upload,
automatic contouring, display, download) is what Zhu Haidong's thesis on noisy-label liver-tumour segmentation
proposes for clinical use; load testing and DICOM conversion, which it left open, are part of this one.
"""
