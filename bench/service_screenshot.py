"""The README's picture of the review page: the `make demo` model's contours of a new phantom patient.

    python bench/service_screenshot.py [--model MODEL_FOLDER] [--out docs/service_review_demo.png]

Starts ``nnunet-ras serve`` on a free loopback port, submits a phantom DICOM CT (a zip) with CTV and PTV margins
through the page in Debian's headless Chromium, waits for the job and saves a screenshot of the review. The browser
test (tests/test_service_browser.py) checks the page; this only takes its picture with a model worth looking at.
"""
import argparse
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'tests'))

from nnunet_ras.demo import demo_model_folder  # noqa: E402
from nnunet_ras.dicom.phantom import write_phantom_patients  # noqa: E402
from nnunet_ras.service.launch import ServiceProcess, zip_folder  # noqa: E402
from nnunet_ras.workspace import Workspace  # noqa: E402
from test_service_browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402  (the flags that give WebGL2 on the CPU)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default=None, help="model folder (default: make demo's)")
    parser.add_argument('--out', default=os.path.join(ROOT, 'docs', 'service_review_demo.png'))
    args = parser.parse_args()
    model = args.model or demo_model_folder(os.path.join(ROOT, 'demo_run'))
    from playwright.sync_api import sync_playwright
    with tempfile.TemporaryDirectory() as work:
        ct = os.path.join(write_phantom_patients(os.path.join(work, 'dicom'), 1, seed=42, with_rtstruct=False)[0],
                          'CT')
        archive = zip_folder(ct, os.path.join(work, 'ct.zip'))
        server = ServiceProcess(Workspace(work).env, os.path.join(work, 'data'), model,
                                '--roi_names', 'liver=Liver', 'tumour=GTV').start()
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={'width': 1500, 'height': 1000})
                page.goto(server.url + '/')
                page.fill('#token', server.token)
                page.click('#login')
                page.set_input_files('#files', archive)
                page.fill('#margins', 'CTV=GTV+5@Liver\nPTV=CTV+5')
                page.click('#submit')
                page.wait_for_selector('#jobs li.job[data-state="done"]', timeout=300_000)
                page.click('#jobs li.job .job-review')
                page.wait_for_selector('#viewer[data-state="ready"]', timeout=60_000)
                page.click('#view-multiplanar')
                page.wait_for_timeout(1500)
                temporary = args.out + '.part.png'
                page.screenshot(path=temporary)
                os.replace(temporary, args.out)
                browser.close()
        finally:
            server.stop()
    print(args.out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
