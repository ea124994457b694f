"""Integration tests of `spinexr.analysis` on a small phantom release: the header table against pydicom, and the
class tables against each other."""
import math

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import numpy as np
import pydicom
import pytest

from spinexr.analysis import (class_table, cooccurrence, header_table, plot_box_sizes, plot_class_counts,
                              plot_cooccurrence, plot_image_sizes, release_summary, show_examples, split_table)
from spinexr.annotations import image_table, images_dir, load_release
from spinexr.core import DET_CLASSES, NO_FINDING


@pytest.fixture(scope='module')
def jpegls_release(phantom_release):
    "12 studies at 256 px, a quarter of the images MONOCHROME1, in JPEG-LS (not the release's syntax)."
    return phantom_release(n_studies=12, seed=3, size=256, mono1_frac=0.25, syntax='jpegls')


def test_header_table_matches_dicoms(jpegls_release):
    ann = load_release(jpegls_release)
    h = header_table(jpegls_release, ann)
    assert len(h) == ann.image_id.nunique() and h.image_id.is_unique
    assert (h.error == '').all() and h.sop_matches.all()
    files = {p.stem: p for split in ('train', 'test') for p in images_dir(jpegls_release, split).glob('*.dicom')}
    assert set(h.image_id) == set(files)
    for r in h.itertuples():
        ds = pydicom.dcmread(files[r.image_id], stop_before_pixels=True)
        assert (r.orig_height, r.orig_width) == (ds.Rows, ds.Columns)
        assert r.photometric == ds.PhotometricInterpretation
        assert r.transfer_syntax == ds.file_meta.TransferSyntaxUID == '1.2.840.10008.1.2.4.80'
        assert r.syntax_name == ds.file_meta.TransferSyntaxUID.name
        assert (r.spacing_row_mm, r.spacing_col_mm) == pytest.approx([float(v) for v in ds.PixelSpacing])
        assert r.height_mm == pytest.approx(ds.Rows * float(ds.PixelSpacing[0]))
    assert set(h.photometric) == {'MONOCHROME1', 'MONOCHROME2'}


def test_class_tables_agree(jpegls_release):
    ann = load_release(jpegls_release)
    imgs = image_table(ann)
    co, ct = cooccurrence(ann), class_table(ann)
    assert co.to_numpy().tolist() == co.to_numpy().T.tolist()
    assert np.diag(co).tolist() == ct.images.reindex(DET_CLASSES).tolist()      # the diagonal: images per class
    assert np.diag(co).tolist() == [(imgs[c] > 0).sum() for c in DET_CLASSES]
    assert ct.boxes.sum() == (ann.lesion_type != NO_FINDING).sum()
    st = split_table(ann)
    assert st.loc['total', 'images'] == st.loc[['train', 'test'], 'images'].sum() == len(imgs)
    assert st.loc['total', 'normal'] == ann[ann.lesion_type == NO_FINDING].image_id.nunique()


def test_box_mm_and_summary(jpegls_release):
    s = release_summary(jpegls_release)
    b = s['boxes']
    assert len(b) == (s['annotations'].lesion_type != NO_FINDING).sum()
    hd = s['headers'].set_index('image_id')
    # the phantom's pixel spacing is 350 mm / image height
    height_px = b.image_id.map(hd.orig_height).to_numpy()
    assert b.height_mm.to_numpy() == pytest.approx(b.height_px.to_numpy() * 350 / height_px)
    assert b.width_mm.to_numpy() == pytest.approx(b.width_px.to_numpy() * b.image_id.map(hd.spacing_col_mm).to_numpy())
    assert s['box_sizes'].loc['all', 'boxes'] == len(b)
    assert not math.isnan(s['box_sizes'].loc['all', 'side@640'])


def test_figures(jpegls_release):
    s = release_summary(jpegls_release)
    figs = [plot_class_counts(s['annotations']), plot_cooccurrence(s['annotations']), plot_image_sizes(s['headers']),
            plot_box_sizes(s['boxes']), show_examples(jpegls_release, s['annotations'], size=128)]
    n_panels = int((s['classes'].boxes > 0).sum()) + 1   # each class present, and a normal image
    assert sum(bool(ax.get_images()) for ax in figs[-1].axes) == n_panels
    for f in figs: plt.close(f)
