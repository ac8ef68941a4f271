"""A regular (non-editable) install ships the trainer folder that nnU-Net scans."""
import glob
import os
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_wheel_installs_trainer_folder_and_entry_point(tmp_path):
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', ROOT,
                    '-w', str(tmp_path / 'wheel')], check=True)
    wheel = glob.glob(str(tmp_path / 'wheel' / 'nnunet_ras-*.whl'))[0]
    names = zipfile.ZipFile(wheel).namelist()
    assert 'nnunet_ras/ext/trainers/nnunet_ras_trainers.py' in names
    assert 'nnunet_ras/ext/planners/nnunet_ras_planners.py' in names
    assert any(n.endswith('entry_points.txt') for n in names)

    target = tmp_path / 'site'
    subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-deps', '-q', '--target', str(target), wheel],
                   check=True)
    env = dict(os.environ, PYTHONPATH=str(target))
    out = subprocess.run([sys.executable, '-c', 'from nnunet_ras.installation import trainer_path; '
                                                'print(trainer_path())'],
                         env=env, capture_output=True, text=True, cwd=str(tmp_path), check=True).stdout.strip()
    assert out == str(target / 'nnunet_ras' / 'ext' / 'trainers')
    # nnU-Net's lookup, pointed at the installed folder, finds the trainer
    code = ('from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f; '
            'print(f("nnUNetTrainerRAS").__module__)')
    found = subprocess.run([sys.executable, '-c', code], env=dict(env, nnUNet_extTrainer=out),
                           capture_output=True, text=True, cwd=str(tmp_path), check=True).stdout
    assert found.strip().splitlines()[-1] == 'nnunet_ras.training.trainers'


def test_every_trainer_class_is_found_by_nnunet(workspace):
    import inspect
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunet_ras.training import baselines, schedules, trainers
    classes = [c for m in (trainers, schedules, baselines) for _, c in inspect.getmembers(m, inspect.isclass)
               if issubclass(c, nnUNetTrainer) and c.__module__ == m.__name__]
    assert len(classes) >= 6
    for cls in classes:
        assert recursive_find_trainer_class_by_name(cls.__name__) is cls
