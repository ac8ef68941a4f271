"""The contouring web page in a real browser (headless Chromium), against the real service.

Logs in with a user token, uploads a phantom DICOM CT series (a zip) with margins, waits for the job, and checks
what a reviewer sees: NiiVue draws each structure over the CT in the structure's colour (pixels of that colour in
a screenshot of the canvas), a structure's checkbox hides it, and the RTSTRUCT downloaded from the page reads back
with rt-utils holding GTV, CTV and PTV. The screenshot of the review is kept as docs/service_review.png.

Nothing is downloaded: Chromium is the Debian package and NiiVue's bundle is copied next to the page, both by
`make install`; WebGL2 runs on the CPU (SwiftShader), so no GPU is needed.
"""
import os
import tempfile
import zipfile
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get('NNUNET_RAS_CHROMIUM', '/usr/bin/chromium')
NIIVUE_BUNDLE = REPO / 'nnunet_ras' / 'service' / 'static' / 'vendor' / 'niivue.umd.js'
SCREENSHOT = REPO / 'docs' / 'service_review.png'
# WebGL2 without a GPU: ANGLE on SwiftShader. The rest keeps Chromium from calling home (this machine's network
# is closed, and every refused connection costs time) and from using a profile other than Playwright's fresh one.
CHROMIUM_ARGS = [
    '--use-angle=swiftshader', '--enable-unsafe-swiftshader',
    '--no-sandbox', '--no-first-run', '--no-default-browser-check', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--disable-default-apps', '--disable-extensions',
    '--metrics-recording-only', '--disable-domain-reliability', '--disable-breakpad',
]
MARGINS = ['CTV=GTV+5@Liver', 'PTV=CTV+5']
JOB_TIMEOUT_MS = 300_000
MIN_PIXELS = 30  # pixels of a structure's colour that count as drawn (one voxel of the phantom is ~100)


def colour_pixels(png: bytes, rgb, tolerance: int = 40) -> int:
    """How many pixels of a screenshot are within ``tolerance`` (per channel) of ``rgb``."""
    image = np.asarray(Image.open(BytesIO(png)).convert('RGB')).astype(int)
    return int((np.abs(image - np.asarray(rgb, dtype=int)).max(axis=-1) <= tolerance).sum())


def wait_for_pixels(canvas, rgb, condition, what: str, keep: Path, timeout_s: float = 15.0) -> int:
    """Screenshots the canvas until ``condition(count)`` holds (NiiVue redraws asynchronously); returns the count.
    On failure the last screenshot is kept in the folder ``keep``."""
    page = canvas.page
    waited = 0.0
    while True:
        png = canvas.screenshot()
        count = colour_pixels(png, rgb)
        if condition(count) or waited >= timeout_s:
            break
        page.wait_for_timeout(250)
        waited += 0.25
    if not condition(count):
        kept = keep / 'viewer_failed.png'
        kept.write_bytes(png)
        raise AssertionError(f"{what}: {count} pixels of colour {tuple(rgb)} in the viewer (screenshot: {kept})")
    return count


def set_visible(page, name: str, visible: bool) -> None:
    box = page.locator(f'.structure-toggle[data-name="{name}"]')
    if box.is_checked() != visible:
        box.click()
    assert box.is_checked() == visible


def api_get(page, path: str, token: str):
    """A GET of the JSON API from inside the page (same origin, with the token)."""
    return page.evaluate(
        """async ([path, token]) => {
            const r = await fetch(path, {headers: {Authorization: `Bearer ${token}`}});
            return {status: r.status, body: await r.json()};
        }""", [path, token])


def save_screenshot(png: bytes) -> None:
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=SCREENSHOT.parent, prefix='.service_review.', suffix='.png')
    with os.fdopen(fd, 'wb') as f:
        f.write(png)
    os.replace(temporary, SCREENSHOT)


def check_prerequisites() -> None:
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"Chromium is not installed ({CHROMIUM} missing): run `make install`, which installs the "
                    f"Debian package chromium (or point NNUNET_RAS_CHROMIUM at a Chromium binary)")
    if not NIIVUE_BUNDLE.is_file():
        pytest.fail(f"{NIIVUE_BUNDLE.relative_to(REPO)} is missing: run `make install` (npm ci in web/ copies "
                    f"NiiVue's bundle there)")


def test_review_in_browser(service, tmp_path):
    check_prerequisites()
    page_errors = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={'width': 1500, 'height': 1000}, accept_downloads=True)
            page = context.new_page()
            page.set_default_timeout(30_000)
            page.on('pageerror', lambda error: page_errors.append(str(error)))

            # log in; the model card and who is logged in come from the API
            page.goto(service.url + '/')
            page.fill('#token', service.token)
            page.click('#login')
            page.wait_for_selector('#app', state='visible')
            page.wait_for_function("document.getElementById('whoami').textContent.length > 0")
            page.wait_for_function("document.getElementById('model-name').textContent.length > 0")
            me = api_get(page, '/api/me', service.token)
            assert me['status'] == 200 and page.text_content('#whoami') == me['body']['name']

            # submit the DICOM zip with two margins; the new job appears in the list
            before = [job['id'] for job in api_get(page, '/api/jobs', service.token)['body']['jobs']]
            page.set_input_files('#files', str(service.dicom_zip))
            page.fill('#margins', '\n'.join(MARGINS))
            page.click('#submit')
            page.wait_for_selector('#submit-message.ok, #submit-message.error', state='visible')
            assert 'error' not in page.get_attribute('#submit-message', 'class'), page.text_content('#submit-message')
            job_id = page.wait_for_function(
                """(before) => {
                    const item = [...document.querySelectorAll('#jobs li.job')].find((li) => !before.includes(li.dataset.id));
                    return item ? item.dataset.id : null;
                }""", arg=before).json_value()
            item = f'#jobs li.job[data-id="{job_id}"]'

            # the list is polled every second until the job is done (or failed)
            page.wait_for_selector(f'{item}[data-state="done"], {item}[data-state="failed"]', timeout=JOB_TIMEOUT_MS)
            assert page.get_attribute(item, 'data-state') == 'done', \
                f"job failed: {page.text_content(item + ' .job-error')}"
            job = api_get(page, f'/api/jobs/{job_id}', service.token)['body']
            structures = {s['name']: s for s in job['structures']}
            assert {'GTV', 'CTV', 'PTV'} <= set(structures), f"structures: {sorted(structures)}"
            liver = next((name for name in structures if name.lower() == 'liver'), None)
            assert liver, f"no liver structure among {sorted(structures)}"

            # review: the CT with every structure drawn over it (organs underneath, GTV on top)
            page.click(f'{item} .job-review')
            page.wait_for_selector('#viewer[data-state="ready"]', timeout=60_000)
            for name in structures:
                assert page.locator(f'.structure-toggle[data-name="{name}"]').is_checked()
            page.click('#view-axial')
            page.wait_for_timeout(500)
            save_screenshot(page.screenshot())  # default opacity, centred on the GTV: the picture in the docs

            # each structure alone at full opacity, centred on it: drawn in its colour; unticked, gone
            page.fill('#opacity', '100')
            canvas = page.locator('#viewer canvas')
            for name in [liver, 'GTV', 'CTV', 'PTV']:
                assert structures[name]['volume_cc'], f"{name} is empty: {structures[name]}"
                for other in structures:
                    set_visible(page, other, other == name)
                page.click(f'.structure-goto[data-name="{name}"]')
                shown = wait_for_pixels(canvas, structures[name]['color'], lambda n: n >= MIN_PIXELS,
                                        f'{name} shown alone', tmp_path)
                set_visible(page, name, False)
                wait_for_pixels(canvas, structures[name]['color'], lambda n: n <= max(5, shown // 50),
                                f'{name} hidden (shown: {shown} pixels)', tmp_path)

            # the RTSTRUCT, downloaded through the page, reads back against the uploaded series
            with page.expect_download() as download_info:
                page.click('#download-rtstruct')
            rtstruct_path = tmp_path / 'RTSTRUCT.dcm'
            download_info.value.save_as(str(rtstruct_path))
            assert download_info.value.suggested_filename.lower().endswith('.dcm')
        finally:
            browser.close()

    series = tmp_path / 'series'
    with zipfile.ZipFile(service.dicom_zip) as archive:
        archive.extractall(series)
    from rt_utils import RTStructBuilder
    rtstruct = RTStructBuilder.create_from(dicom_series_path=str(series), rt_struct_path=str(rtstruct_path))
    names = rtstruct.get_roi_names()
    assert {'GTV', 'CTV', 'PTV'} <= set(names), names
    for name in ('GTV', 'CTV', 'PTV'):
        assert rtstruct.get_roi_mask_by_name(name).any(), f"{name} is empty in the downloaded RTSTRUCT"
    assert not page_errors, f"JavaScript errors on the page: {page_errors}"
