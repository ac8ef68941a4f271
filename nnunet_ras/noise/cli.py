"""The label-noise subcommands of ``nnunet-ras``: corrupt-labels and jsrt-to-dataset."""
import argparse


def _corrupt_labels(args) -> int:
    from nnunet_ras.noise.corrupt import MANIFEST_NAME, corrupt_dataset
    folder = corrupt_dataset(args.d, args.o, args.name, args.fraction, tuple(args.radius), args.ops, args.shift,
                             args.labels, args.seed, args.overwrite)
    print(f"{folder} (manifest: {MANIFEST_NAME})")
    return 0


def _jsrt_to_dataset(args) -> int:
    from nnunet_ras.noise import raw_folder
    from nnunet_ras.noise.jsrt import convert_jsrt
    for folder in convert_jsrt(args.i, args.o or raw_folder(), args.d, args.structures, args.test_fraction,
                               args.seed, args.size):
        print(folder)
    return 0


def add_noise_commands(subparsers: argparse._SubParsersAction) -> None:
    from nnunet_ras.noise.corrupt import OPERATIONS
    from nnunet_ras.noise.jsrt import STRUCTURES
    p = subparsers.add_parser('corrupt-labels', help='copy a raw data set with a share of its training labels '
                                                     'dilated/eroded (label-noise experiments; test labels untouched)')
    p.add_argument('-d', required=True, help='source dataset id or name (in $nnUNet_raw)')
    p.add_argument('-o', type=int, required=True, help='id of the new data set')
    p.add_argument('-name', required=True, help='name of the new data set (DatasetNNN_NAME)')
    p.add_argument('-fraction', type=float, required=True, help='share of training cases to corrupt (0..1)')
    p.add_argument('-radius', type=int, nargs=2, required=True, metavar=('MIN', 'MAX'),
                   help='inclusive range of the radius in pixels/voxels (Zhu H.: 1 8 or 5 13)')
    p.add_argument('-ops', nargs='+', choices=OPERATIONS, default=list(OPERATIONS),
                   help='operations drawn from, per case and label (default: dilate erode)')
    p.add_argument('--shift', action='store_true', help='also translate each corrupted structure by a random '
                                                        'vector whose length is drawn from the same range')
    p.add_argument('-labels', nargs='+', default=None, help='label names or values to corrupt (default: all '
                                                            'foreground labels but ignore)')
    p.add_argument('-seed', type=int, default=0)
    p.add_argument('--overwrite', action='store_true', help='replace an existing data set of this id and name whole '
                                                            '(by default the id must be unused)')
    p.set_defaults(func=_corrupt_labels)

    p = subparsers.add_parser('jsrt-to-dataset', help='JSRT/SCR chest radiographs -> one nnU-Net raw 2D data set '
                                                      'per structure, with one seeded train/test split')
    p.add_argument('-i', required=True, help='folder with images/<case>.png and masks/<structure>/<case>.png')
    p.add_argument('-d', type=int, required=True, help='first dataset id (lungs +0, heart +1, clavicles +2)')
    p.add_argument('-structures', nargs='+', choices=list(STRUCTURES), default=list(STRUCTURES))
    p.add_argument('-test_fraction', type=float, default=0.5, help='share of cases in imagesTs/labelsTs')
    p.add_argument('-seed', type=int, default=0, help='seed of the train/test split')
    p.add_argument('-size', type=int, default=None, help='resample to SIZE x SIZE (images bilinear, masks nearest)')
    p.add_argument('-o', default=None, help='raw folder (default: $nnUNet_raw)')
    p.set_defaults(func=_jsrt_to_dataset)
