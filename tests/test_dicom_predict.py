"""``nnunet-ras predict`` with a real (tiny) trained model on a DICOM CT series and on NIfTI.

The model is trained in the fixture with the stock commands (1 epoch of 5 iterations on CPU), so its predictions
are poor; what is tested is the plumbing: references to the source series, identity copied, ROIs readable by
rt-utils, margins nested, ensembling, files complete.
"""
import glob
import json
import os
import pickle
import subprocess

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import TINY
from rt_utils import RTStructBuilder

from nnunet_ras.dicom.phantom import write_phantom_patients
from nnunet_ras.dicom.predict import case_name
from nnunet_ras.dicom.readers import dciodvfy
from nnunet_ras.dicom.rtstruct import read_rtstruct
from nnunet_ras.dicom.seg import read_dicom_seg
from nnunet_ras.dicom.series import read_ct_series

TRAINER = 'nnUNetTrainerRAS_1epoch_5iters'


@pytest.fixture(scope='module')
def trained(tiny_phantom):
    """(workspace, model folder) of a model trained on the tiny phantom, fold 0."""
    ws = tiny_phantom
    ws.run(['nnUNetv2_plan_and_preprocess', '-d', '990', '-c', '3d_fullres', '-np', '1', '-npfp', '1'],
           step='nnUNetv2_plan_and_preprocess (DICOM predict fixture)')
    ws.run(['nnUNetv2_train', '990', '3d_fullres', '0', '-tr', TRAINER, '-device', 'cpu'],
           step=f'nnUNetv2_train {TRAINER} fold 0 (DICOM predict fixture)')
    model = ws.path('nnUNet_results', 'Dataset990_TinyPhantom', f'{TRAINER}__nnUNetPlans__3d_fullres')
    assert os.path.isfile(os.path.join(model, 'fold_0', 'checkpoint_final.pth'))
    return ws, model


def _predict(ws, model_args, input_path, output):
    return ws.run(['nnunet-ras', 'predict', '-i', input_path, '-o', output, *model_args, '-f', '0',
                   '-device', 'cpu', '--disable_tta', '--roi_names', 'tumour=GTV', 'liver=Liver',
                   '--roi_colors', 'GTV=200,0,0', '--margin', 'CTV=GTV+5@Liver', 'PTV=CTV+5,5,7'],
                  step='nnunet-ras predict')


def test_predict_on_dicom_writes_rtstruct_and_seg_referencing_the_source(trained, tmp_path):
    ws, model = trained
    patient = write_phantom_patients(str(tmp_path / 'dicom'), 1, seed=7, with_rtstruct=False, geometry=TINY)[0]
    ct_folder = os.path.join(patient, 'CT')
    out = str(tmp_path / 'out')
    result = _predict(ws, ['-m', model], ct_folder, out)
    assert 'PTV' in result.stdout and 'cc' in result.stdout

    series = read_ct_series(ct_folder)
    case = case_name(ct_folder, series)  # patient ID and series, not the folder name 'CT'
    assert case.startswith(series.patient_id + '_')
    rtstruct_path = os.path.join(out, f'{case}_RTSTRUCT.dcm')
    ds = pydicom.dcmread(rtstruct_path)
    assert ds.Modality == 'RTSTRUCT'
    assert (ds.PatientID, ds.PatientName, ds.StudyInstanceUID) == \
        (series.patient_id, series.first.PatientName, series.study_uid)
    frame = ds.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == series.frame_of_reference_uid
    study = frame.RTReferencedStudySequence[0]
    assert study.ReferencedSOPInstanceUID == series.study_uid
    assert study.RTReferencedSeriesSequence[0].SeriesInstanceUID == series.series_uid
    assert ds.SeriesInstanceUID != series.series_uid  # a new series of its own
    assert {c.ReferencedSOPInstanceUID for c in study.RTReferencedSeriesSequence[0].ContourImageSequence} == \
        {h.SOPInstanceUID for h in series.headers}
    names = [r.ROIName for r in ds.StructureSetROISequence]
    assert names == ['Liver', 'GTV', 'CTV', 'PTV']
    types = {str(o.ReferencedROINumber): o.RTROIInterpretedType for o in ds.RTROIObservationsSequence}
    assert [types[str(r.ROINumber)] for r in ds.StructureSetROISequence] == ['ORGAN', 'GTV', 'CTV', 'PTV']
    colours = {str(c.ReferencedROINumber): [int(v) for v in c.ROIDisplayColor] for c in ds.ROIContourSequence}
    assert colours[str(names.index('GTV') + 1)] == [200, 0, 0]

    # rt-utils reads it back on the CT folder, and the structures are nested: GTV in CTV in PTV
    rt = RTStructBuilder.create_from(ct_folder, rtstruct_path)
    assert rt.get_roi_names() == names
    masks = {name: read_rtstruct(rtstruct_path, series).mask(name) for name in names}
    report = json.load(open(os.path.join(out, f'{case}_report.json')))
    volumes = report['volumes_cc']
    print(f"\nvolumes predicted by the 5-iteration model (cc): {volumes}")
    assert volumes['GTV'] <= volumes['CTV'] <= volumes['PTV']
    assert (masks['CTV'] >= masks['GTV']).all() and (masks['PTV'] >= masks['CTV']).all()
    if volumes['GTV'] > 0:  # a 5-iteration model may find no tumour; then the margins are empty too
        assert volumes['GTV'] < volumes['PTV']

    seg = pydicom.dcmread(os.path.join(out, f'{case}_SEG.dcm')) if volumes['PTV'] or volumes['Liver'] else None
    if seg is not None:
        assert (seg.PatientID, seg.StudyInstanceUID, seg.FrameOfReferenceUID) == \
            (series.patient_id, series.study_uid, series.frame_of_reference_uid)
        assert set(read_dicom_seg(os.path.join(out, f'{case}_SEG.dcm'), series)) == \
            {name for name in names if volumes[name] > 0}

    for written in glob.glob(os.path.join(out, '*.dcm')):  # the reference validator finds nothing to report
        assert dciodvfy(written).errors == [], written

    label = sitk.ReadImage(os.path.join(out, f'{case}.nii.gz'))
    assert label.GetSize() == series.image.GetSize()
    assert np.allclose(label.GetOrigin(), series.image.GetOrigin())
    assert not glob.glob(os.path.join(out, '*.part*')) and not glob.glob(os.path.join(out, '.*'))


def test_predict_on_nifti_and_ensemble_of_two_models(trained, tmp_path):
    ws, model = trained
    image = sorted(glob.glob(ws.path('nnUNet_raw', 'Dataset990_TinyPhantom', 'imagesTs', '*_0000.nii.gz')))[0]
    case = os.path.basename(image)[:-len('_0000.nii.gz')]
    single, ensemble = str(tmp_path / 'single'), str(tmp_path / 'ensemble')
    _predict(ws, ['-m', model], image, single)
    _predict(ws, ['-m', model, model], image, ensemble)  # the mean of two equal models is that model
    for folder in (single, ensemble):
        assert sorted(os.listdir(folder)) == sorted([f'{case}.nii.gz', f'{case}_CTV.nii.gz', f'{case}_PTV.nii.gz',
                                                     f'{case}_report.json'])
    a, b = (sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(f, f'{case}.nii.gz'))) for f in (single, ensemble))
    assert np.array_equal(a, b)
    assert sitk.ReadImage(os.path.join(single, f'{case}.nii.gz')).GetSize() == sitk.ReadImage(image).GetSize()


def test_predict_refuses_models_of_other_label_sets(trained, tmp_path):
    ws, model = trained
    other = tmp_path / 'other_model'
    os.makedirs(other / 'fold_0')
    for name in ('plans.json', 'dataset.json'):
        data = json.load(open(os.path.join(model, name)))
        if name == 'dataset.json':
            data['labels'] = {'background': 0, 'liver': 1}
        json.dump(data, open(other / name, 'w'))
    os.symlink(os.path.join(model, 'fold_0', 'checkpoint_final.pth'), other / 'fold_0' / 'checkpoint_final.pth')
    image = sorted(glob.glob(ws.path('nnUNet_raw', 'Dataset990_TinyPhantom', 'imagesTs', '*_0000.nii.gz')))[0]
    result = ws.run(['nnunet-ras', 'predict', '-i', image, '-o', str(tmp_path / 'out'), '-m', model, str(other),
                     '-f', '0', '-device', 'cpu', '--disable_tta'], check=False)
    assert result.returncode == 2 and 'only models of one label set can be ensembled' in result.stderr


def test_sigterm_during_predict_leaves_no_output_and_the_rerun_succeeds(trained, tmp_path):
    """SIGTERM once the hidden work folder exists (inference under way): exit 143, no output folder, no temporaries;
    a second run writes the complete output."""
    import signal
    import subprocess
    import time
    ws, model = trained
    image = sorted(glob.glob(ws.path('nnUNet_raw', 'Dataset990_TinyPhantom', 'imagesTs', '*_0000.nii.gz')))[0]
    out = str(tmp_path / 'out')
    cmd = ['nnunet-ras', 'predict', '-i', image, '-o', out, '-m', model, '-f', '0', '-device', 'cpu']
    process = subprocess.Popen(cmd, env=ws.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not glob.glob(str(tmp_path / '.out.part-*')) and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=300)
    if process.returncode == 0:
        pytest.skip('prediction finished before the signal')
    assert process.returncode == 143 and 'Traceback' not in err
    assert os.listdir(tmp_path) == []
    ws.run(cmd)
    assert os.listdir(tmp_path) == ['out'] and len(os.listdir(out)) == 2  # label map and report


def test_predict_cleanup_nnunet_postprocessing_islands_and_holes(trained, tmp_path):
    """nnU-Net's postprocessing.pkl is found in the model folder and applied, islands and holes are cleaned, every
    change is in the report, and the NIfTI, the volumes and the RTSTRUCT agree with each other."""
    from nnunetv2.postprocessing.remove_connected_components import \
        remove_all_but_largest_component_from_segmentation
    ws, model = trained
    copy = tmp_path / 'model'  # the fixture's model with a post-processing of its own
    os.makedirs(copy / 'crossval_results_folds_0')
    for name in ('plans.json', 'dataset.json'):
        os.symlink(os.path.join(model, name), copy / name)
    os.symlink(os.path.join(model, 'fold_0'), copy / 'fold_0')
    with open(copy / 'crossval_results_folds_0' / 'postprocessing.pkl', 'wb') as f:
        pickle.dump(([remove_all_but_largest_component_from_segmentation], [{'labels_or_regions': 2}]), f)
    patient = write_phantom_patients(str(tmp_path / 'dicom'), 1, seed=11, with_rtstruct=False, geometry=TINY)[0]
    ct = os.path.join(patient, 'CT')
    common = ['nnunet-ras', 'predict', '-i', ct, '-m', str(copy), '-f', '0', '-device', 'cpu', '--disable_tta',
              '--roi_names', 'tumour=GTV', 'liver=Liver', '--margin', 'PTV=GTV+5']
    ws.run([*common, '-o', str(tmp_path / 'raw'), '--postprocessing', 'none'])
    result = ws.run([*common, '-o', str(tmp_path / 'clean'), '--min_island_cc', 'Liver=1000',
                     '--fill_holes', 'Liver'])
    assert 'clean-up: Liver: islands under 1000 cc removed' in result.stdout
    case = case_name(ct, read_ct_series(ct))
    raw, clean = (json.load(open(tmp_path / f / f'{case}_report.json')) for f in ('raw', 'clean'))
    assert raw['cleanup'] == []
    steps = {(s['step'], s['structure']): s for s in clean['cleanup']}
    print(f"\nclean-up of the 5-iteration model's prediction: {clean['cleanup']}; volumes before "
          f"{raw['volumes_cc']}, after {clean['volumes_cc']}")
    assert raw['volumes_cc']['Liver'] > 0
    assert steps[('nnU-Net postprocessing', 'GTV')]['file'].endswith('crossval_results_folds_0/postprocessing.pkl')
    liver_change = steps[('islands under 1000 cc removed', 'Liver')]['removed_cc']
    liver_added = steps[('holes filled (per slice)', 'Liver')]['added_cc']
    assert abs(raw['volumes_cc']['Liver'] - liver_change + liver_added - clean['volumes_cc']['Liver']) < 0.01
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / 'clean' / f'{case}.nii.gz')))
    from scipy import ndimage
    assert ndimage.label(labels == 1, np.ones((3, 3, 3)))[1] <= 1  # the largest liver part only
    assert ndimage.label(labels == 2, np.ones((3, 3, 3)))[1] <= 1  # nnU-Net's largest-component rule on tumour
    for plane in labels:  # no background left inside the liver on any slice
        background, count = ndimage.label(plane == 0)
        for region in range(1, count + 1):  # every enclosed background region also borders something not liver
            inside = background == region
            ring = ndimage.binary_dilation(inside) & ~inside
            on_border = inside[0].any() or inside[-1].any() or inside[:, 0].any() or inside[:, -1].any()
            assert on_border or set(np.unique(plane[ring])) != {1}
    series = read_ct_series(ct)
    gtv = read_rtstruct(str(tmp_path / 'clean' / f'{case}_RTSTRUCT.dcm'), series).mask('GTV')
    assert np.array_equal(gtv, labels == 2)


def test_clean_labels_on_a_constructed_map():
    from nnunet_ras.dicom.postprocess import Cleanup, clean_labels
    labels = np.zeros((4, 20, 20), np.uint8)
    labels[:, 2:12, 2:12] = 1  # liver, 400 voxels of 1 mm^3 ...
    labels[1, 5:8, 5:8] = 0  # ... with a hole on one slice
    labels[2, 5:7, 5:7] = 2  # a tumour inside it: not background, never filled over
    labels[3, 4:9, 4:9] = 2  # a tumour with a pocket of background: the tumour's hole, not the liver's
    labels[3, 6, 6] = 0
    labels[0, 15, 15] = 1  # a one-voxel island
    labels[3, 17:19, 17:19] = 2  # a second, smaller tumour part
    cleaned, report = clean_labels(labels, {'Liver': 1, 'GTV': 2}, (1.0, 1.0, 1.0),
                                   Cleanup('none', {'Liver': 0.01, 'GTV': 1.0}, ['Liver']), None)
    assert cleaned[0, 15, 15] == 0 and (cleaned[1, 5:8, 5:8] == 1).all() and (cleaned[2, 5:7, 5:7] == 2).all()
    assert (cleaned[3, 17:19, 17:19] == 0).all()  # the smaller tumour part goes, the larger stays
    assert cleaned[3, 6, 6] == 0 and (cleaned[3, 4:9, 4:9] > 0).sum() == 24  # the tumour's pocket stays empty
    assert {(r['structure'], r.get('removed_cc', r.get('added_cc'))) for r in report} == \
        {('Liver', 0.001), ('GTV', 0.004), ('Liver', 0.009)}


def test_predict_refuses_unknown_cleanup_names_before_running_the_model(trained, tmp_path):
    ws, model = trained
    image = sorted(glob.glob(ws.path('nnUNet_raw', 'Dataset990_TinyPhantom', 'imagesTs', '*_0000.nii.gz')))[0]
    result = ws.run(['nnunet-ras', 'predict', '-i', image, '-o', str(tmp_path / 'out'), '-m', model, '-f', '0',
                     '-device', 'cpu', '--min_island_cc', 'Spleen=1'], check=False)
    assert result.returncode == 2 and "'Spleen'" in result.stderr and 'does not predict' in result.stderr
    assert not os.path.exists(tmp_path / 'out')


def test_step_size_sets_how_many_tiles_the_window_takes(trained, tmp_path, monkeypatch):
    from nnunet_ras.dicom.predict import predict_probabilities
    ws, model = trained
    for key, value in ws.env.items():
        monkeypatch.setenv(key, value)
    image = sitk.ReadImage(sorted(glob.glob(ws.path('nnUNet_raw', 'Dataset990_TinyPhantom', 'imagesTs',
                                                   '*_0000.nii.gz')))[0])
    wide = sitk.GetImageFromArray(np.tile(sitk.GetArrayFromImage(image), (1, 2, 2)))  # larger than one patch
    wide.SetSpacing(image.GetSpacing())
    wide.SetOrigin(image.GetOrigin())
    wide.SetDirection(image.GetDirection())
    path = str(tmp_path / 'wide_0000.nii.gz')
    sitk.WriteImage(wide, path)
    tiles = {}
    for step in (0.5, 1.0):
        calls = []
        labels, _ = predict_probabilities([model], ['0'], 'checkpoint_final.pth', path, 'cpu', False, str(tmp_path),
                                          lambda stage, fraction: calls.append((stage, fraction)), step_size=step)
        tiles[step] = sum(1 for stage, fraction in calls if stage == 'predicting' and fraction > 0)
        assert labels.GetSize() == wide.GetSize()
    assert 0 < tiles[1.0] < tiles[0.5], tiles
    refused = subprocess.run(['nnunet-ras', 'predict', '-i', path, '-o', str(tmp_path / 'out'), '-m', model,
                              '-step_size', '1.5'], env=ws.env, capture_output=True, text=True)
    assert refused.returncode == 2 and 'at most 1' in refused.stderr
    assert not os.path.exists(tmp_path / 'out')


def test_bf16_is_offered_only_where_the_cpu_computes_it_natively(tmp_path):
    """oneDNN says bfloat16 is supported on any AVX512 CPU, where it is emulated and slower than float32: the CPU's
    own flags decide."""
    from nnunet_ras.dicom import DicomError
    from nnunet_ras.dicom.predict import check_bf16, native_bf16
    x86 = 'processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512vl{}\nbugs\t\t: spectre_v1\n'
    arm = 'processor\t: 0\nFeatures\t: fp asimd sve{}\nCPU implementer\t: 0x41\n'
    for text, expected in ((x86.format(''), False), (x86.format(' avx512_bf16'), True),
                           (x86.format(' amx_bf16 amx_tile'), True), (arm.format(''), False),
                           (arm.format(' bf16 i8mm'), True), ('bugs\t\t: avx512_bf16 named elsewhere\n', None)):
        path = tmp_path / 'cpuinfo'
        path.write_text(text)
        if expected is None:  # no flags line: oneDNN's own test decides
            import torch
            expected = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        assert native_bf16(str(path)) is expected, text
    assert native_bf16(str(tmp_path / 'missing')) in (True, False)
    if native_bf16():  # this machine: --bf16 accepted exactly where native
        check_bf16('cpu')
    else:
        with pytest.raises(DicomError, match='no native bfloat16'):
            check_bf16('cpu')
    with pytest.raises(DicomError, match='on the CPU'):
        check_bf16('cuda')


def test_bf16_and_torch_resampling_speed_options(trained, tmp_path, monkeypatch):
    """--bf16 runs every tile in bfloat16, and nnU-Net accumulates the tiles as it does without (in its own dtype),
    close to float32's logits; --torch_resampling exports
    with nnU-Net's torch resampling; either way the label map on the input's grid is almost the same."""
    import torch
    from nnunet_ras.dicom.predict import _tile_counting_predictor, predict_probabilities, with_torch_resampling
    ws, model = trained  # bfloat16 is computed on any CPU (emulated where not native), so this runs everywhere
    for key, value in ws.env.items():
        monkeypatch.setenv(key, value)
    image = sorted(glob.glob(ws.path('nnUNet_raw', 'Dataset990_TinyPhantom', 'imagesTs', '*_0000.nii.gz')))[0]

    logits = {}
    for bf16 in (False, True):
        predictor = _tile_counting_predictor(lambda n: None, lambda: None, bf16)(
            use_mirroring=False, device=torch.device('cpu'), allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(model, ('0',), 'checkpoint_final.pth')
        data, properties = predictor.plans_manager.image_reader_writer_class().read_images([image])
        preprocessed, _, _ = predictor.configuration_manager.preprocessor_class(verbose=False).run_case_npy(
            data, None, properties, predictor.plans_manager, predictor.configuration_manager, predictor.dataset_json)
        logits[bf16] = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(preprocessed))
    assert logits[True].dtype == logits[False].dtype
    assert not torch.equal(logits[True], logits[False])  # bfloat16 ran (8-bit mantissa: some logits differ) ...
    # ... and the classes hold: at > 0.95 of the voxels for this 5-iteration model, whose classes are nearly tied
    # everywhere (the demo's trained model: 0.9999, README)
    assert (logits[True].argmax(0) == logits[False].argmax(0)).float().mean() > 0.95

    manager = with_torch_resampling(predictor.configuration_manager)
    assert manager.resampling_fn_probabilities.func.__name__ == 'resample_torch_fornnunet'
    assert manager.resampling_fn_data.func.__name__ == predictor.configuration_manager.resampling_fn_data.func.__name__
    labels = {}
    for options in ({}, {'bf16': True, 'torch_resampling': True}):
        label, _ = predict_probabilities([model], ['0'], 'checkpoint_final.pth', image, 'cpu', False, str(tmp_path),
                                         **options)
        labels[bool(options)] = sitk.GetArrayFromImage(label)
    assert labels[True].shape == labels[False].shape == sitk.GetArrayFromImage(sitk.ReadImage(image)).shape
    assert (labels[True] == labels[False]).mean() > 0.95
    assert not os.listdir(tmp_path)  # the temporary label file is gone
