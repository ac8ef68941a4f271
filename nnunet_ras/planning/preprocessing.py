"""``nnunet-ras plan_and_preprocess``: nnU-Net's fingerprint, planning and preprocessing with nnUNetPlannerRAS."""
from typing import Optional, Sequence

from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprint_dataset, preprocess_dataset
from nnunetv2.paths import nnUNet_raw
from batchgenerators.utilities.file_and_folder_operations import join

from nnunet_ras.dataset_checks import check_raw_dataset
from nnunet_ras.dataset_ids import resolve_dataset
from nnunet_ras.planning.planner import nnUNetPlannerRAS


def plan_and_preprocess(dataset_id: int,
                        configurations: Sequence[str] = ('2d', '3d_fullres', '3d_lowres'),
                        num_processes: Sequence[int] = (8, 4, 8),
                        num_processes_fingerprint: int = 8,
                        gpu_memory_target_in_gb: Optional[float] = None,
                        overwrite_target_spacing: Optional[Sequence[float]] = None,
                        plans_name: str = 'nnUNetRASPlans',
                        base_features: Optional[int] = None,
                        verify_dataset_integrity: bool = False,
                        clean: bool = False,
                        no_pp: bool = False,
                        verbose: bool = False,
                        show_progress_bar: bool = True) -> str:
    """Runs the three nnU-Net steps for one data set and returns the plans identifier."""
    check_raw_dataset(join(nnUNet_raw, resolve_dataset(str(dataset_id))))
    extract_fingerprint_dataset(dataset_id, num_processes=num_processes_fingerprint,
                                check_dataset_integrity=verify_dataset_integrity, clean=clean, verbose=verbose,
                                show_progress_bar=show_progress_bar)
    kwargs = {'gpu_memory_target_in_gb': gpu_memory_target_in_gb} if gpu_memory_target_in_gb is not None else {}
    planner = nnUNetPlannerRAS(dataset_id, plans_name=plans_name,
                               overwrite_target_spacing=[float(s) for s in overwrite_target_spacing]
                               if overwrite_target_spacing is not None else None, **kwargs)
    if base_features is not None:
        planner.UNet_base_num_features = base_features
    planner.plan_experiment()
    if not no_pp:
        preprocess_dataset(dataset_id, planner.plans_identifier, configurations, num_processes, verbose,
                           show_progress_bar)
    return planner.plans_identifier
