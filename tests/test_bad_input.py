"""Bad input gets a clear error that names the case or file, and nothing is half-written."""
import json
import os

import SimpleITK as sitk

from nnunet_ras.cli import main
from nnunet_ras.phantom import write_phantom_dataset
from conftest import TINY

DATASET = 'Dataset991_Broken'


def _dataset(workspace):
    return write_phantom_dataset(workspace.env['nnUNet_raw'], 991, 'Broken', num_train=5, num_test=0,
                                 geometry=TINY)


def _plan(capsys):
    code = main(['plan_and_preprocess', '-d', '991', '-c', '3d_fullres', '-np', '1', '-npfp', '1', '--no_pbar'])
    return code, capsys.readouterr().err


def _nothing_written(workspace):
    folder = workspace.path('nnUNet_preprocessed', DATASET)
    return not os.path.isdir(folder) or not os.listdir(folder)


def test_label_on_another_grid_names_the_case(workspace, capsys):
    folder = _dataset(workspace)
    label_path = os.path.join(folder, 'labelsTr', 'phantom_002.nii.gz')
    label = sitk.ReadImage(label_path)
    label.SetSpacing((1.0, 1.0, 3.0))  # same voxels, another grid
    sitk.WriteImage(label, label_path)
    code, err = _plan(capsys)
    assert code == 2
    assert 'phantom_002' in err and 'spacing' in err and 'another grid' in err
    assert _nothing_written(workspace)


def test_corrupt_nifti_names_the_file(workspace, capsys):
    folder = _dataset(workspace)
    image_path = os.path.join(folder, 'imagesTr', 'phantom_003_0000.nii.gz')
    data = open(image_path, 'rb').read()
    with open(image_path, 'wb') as f:
        f.write(data[:200])  # truncated
    code, err = _plan(capsys)
    assert code == 2
    assert image_path in err and 'cannot be read' in err
    assert _nothing_written(workspace)


def test_wrong_dataset_json_names_the_key(workspace, capsys):
    folder = _dataset(workspace)
    json_path = os.path.join(folder, 'dataset.json')
    dataset_json = json.load(open(json_path))
    del dataset_json['labels']
    json.dump(dataset_json, open(json_path, 'w'))
    code, err = _plan(capsys)
    assert code == 2 and json_path in err and "'labels'" in err

    dataset_json['labels'] = {'background': 0, 'liver': 1, 'tumour': 2}
    dataset_json['numTraining'] = 7
    json.dump(dataset_json, open(json_path, 'w'))
    code, err = _plan(capsys)
    assert code == 2 and 'numTraining is 7' in err and '5 training cases' in err
    assert _nothing_written(workspace)


def test_check_explains_a_missing_trainer_folder(workspace, monkeypatch, capsys):
    assert main(['check']) == 0
    assert 'installation OK' in capsys.readouterr().out
    monkeypatch.delenv('nnUNet_extTrainer')
    monkeypatch.delenv('nnUNet_results')
    assert main(['check']) == 1
    out = capsys.readouterr().out
    assert 'FAIL  nnUNet_results is not set' in out
    assert 'export nnUNet_extTrainer=' in out and 'cannot find the trainer' in out
