"""The contouring service: ``nnunet-ras serve`` (FastAPI on uvicorn, a web page with NiiVue), its job queue (huey,
SQLite or Redis) and ``nnunet-ras worker``.

Layers, top down: ``cli`` -> ``app`` (HTTP) -> ``jobs`` (queue, workers, heartbeat) -> ``uploads`` / ``models`` /
``store`` (job table, users) -> ``nnunet_ras.dicom.predict``. A contouring web system of this kind (upload,
automatic contouring, display, download) is what Zhu Haidong's thesis on noisy-label liver-tumour segmentation
proposes for clinical use; load testing and DICOM conversion, which it left open, are part of this one.
"""
