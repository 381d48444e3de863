"""app.py: the page in a real browser (headless Debian Chromium driven by Selenium), the /predict endpoint
through gradio_client, and the refusals. The server runs as `python app.py` on a free local port with an
untrained micro detector: these tests check the plumbing, not the verdicts."""
import os
import shutil
import socket
import subprocess
import sys
import time
from argparse import Namespace
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest

pytest.importorskip('dlib')
import app  # noqa: E402
import predict  # noqa: E402
from conftest import ROOT  # noqa: E402

CHROMIUM, CHROMEDRIVER = '/usr/bin/chromium', '/usr/bin/chromedriver'
VERDICT = r'(REAL|FAKE): p\(fake\) = \d\.\d{3}'


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='module')
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp('app_media')
    app.write_examples(d)
    cv2.imwrite(str(d / 'blank.png'), np.full((200, 200, 3), 127, np.uint8))
    (d / 'notes.jpg').write_text('a text file, renamed')
    (d / 'truncated.png').write_bytes((d / 'astronaut.png').read_bytes()[:100_000])
    return d


@pytest.fixture(scope='module')
def server(micro_checkpoints, tmp_path_factory):
    """`python app.py` on a free port of 127.0.0.1, offline; its URL. Stopped at the end of the module."""
    port = free_port()
    log = tmp_path_factory.mktemp('app_log') / 'app.log'
    env = dict(os.environ, HF_HUB_OFFLINE='1', GRADIO_ANALYTICS_ENABLED='False', OMP_NUM_THREADS='2')
    with open(log, 'w') as out:
        proc = subprocess.Popen([sys.executable, 'app.py', '--checkpoint', str(micro_checkpoints['detector']),
                                 '--port', str(port), '--frames', '4'], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    url = f'http://127.0.0.1:{port}/'
    try:
        deadline = time.time() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail(f'app.py ended with {proc.returncode}: {log.read_text()[-2000:]}')
            try:
                with socket.create_connection(('127.0.0.1', port), timeout=1):
                    break
            except OSError:
                if time.time() > deadline:
                    pytest.fail(f'app.py did not serve within 240 s: {log.read_text()[-2000:]}')
                time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope='module')
def browser():
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        why = f'{CHROMIUM} and {CHROMEDRIVER} are needed (Debian: apt-get install chromium chromium-driver)'
        if os.environ.get('CI'):
            pytest.fail(f'the browser test must run in CI: {why}')
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    opts = Options()
    opts.binary_location = CHROMIUM
    for a in ('--headless=new', '--no-sandbox', '--disable-dev-shm-usage', '--window-size=1400,1000'):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()


@pytest.mark.slow
def test_page_in_a_browser(server, browser, media):
    """Photo: verdict, annotated image, heat maps, CSV. A text file named .jpg: a message. Then a video: the
    track verdicts -- the server kept serving. Never a path of the server on the page."""
    import csv
    import io
    import re
    import urllib.request

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    d, wait = browser, WebDriverWait(browser, 120)
    d.get(server)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '#upload input[type=file]'))

    def upload(path, done):
        for clear in d.find_elements(By.CSS_SELECTOR, '#upload button[aria-label="Clear"]'):   # the last file
            clear.click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '#upload input[type=file]'))
        d.find_element(By.CSS_SELECTOR, '#upload input[type=file]').send_keys(str(path))
        wait.until(lambda d: path.name in d.find_element(By.ID, 'verdict').text and done(text('verdict')))
        assert '/tmp' not in d.find_element(By.TAG_NAME, 'body').text and str(ROOT) not in text('verdict')

    def text(elem_id):
        return d.find_element(By.ID, elem_id).text

    def csv_rows(name='astronaut_verdicts.csv'):
        """The rows of the CSV the page offers, downloaded from its link (header dropped)."""
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '#csv a') and
                   d.find_element(By.CSS_SELECTOR, '#csv a').get_attribute('href').endswith(name))
        with urllib.request.urlopen(d.find_element(By.CSS_SELECTOR, '#csv a').get_attribute('href')) as f:
            return list(csv.reader(io.StringIO(f.read().decode())))[1:]

    upload(media / 'astronaut.png', lambda t: 'p(fake)' in t)
    assert re.search(VERDICT, text('verdict'))
    rows = [r for r in text('faces').splitlines()[1:] if r.strip()]
    assert len(rows) == 1 and re.match(r'0 \d+, \d+, \d+, \d+ \d\.\d{3} (REAL|FAKE)$', rows[0])
    img = d.find_element(By.CSS_SELECTOR, '#annotated img')
    wait.until(lambda d: d.execute_script('return arguments[0].complete && arguments[0].naturalWidth', img))
    assert d.execute_script('return [arguments[0].naturalWidth, arguments[0].naturalHeight]', img) == [512, 512]
    assert d.find_elements(By.CSS_SELECTOR, '#heatmaps img')
    assert csv_rows()[0][:2] == ['astronaut.png', '0'] and rows[0].endswith(csv_rows()[0][-1].upper())

    upload(media / 'notes.jpg', lambda t: 'No verdict' in t)
    assert 'notes.jpg: cannot decode image' in text('verdict') and not text('faces')

    upload(media / 'astronaut_clip.mp4', lambda t: 'p(fake)' in t)
    assert re.search(VERDICT, text('verdict')) and 'frame(s) with a face of 4 read' in text('verdict')
    tracks = [r for r in text('tracks').splitlines()[1:] if r.strip()]
    assert tracks and all(re.match(r'\d+ \d+ \d\.\d{3} .* (REAL|FAKE) (yes|no)', r) for r in tracks)
    frames = csv_rows('astronaut_clip_verdicts.csv')
    assert len(frames) >= 3 and {r[0] for r in frames} == {'astronaut_clip.mp4'}


@pytest.mark.slow
def test_predict_endpoint(server, media, micro_checkpoints):
    """/predict through gradio_client: predict.py's faces and probabilities; no face: faces [] and a message;
    a text file and a truncated photo: a message; two requests at once: both answered."""
    from gradio_client import Client, handle_file
    client = Client(server, verbose=False)
    photo = client.predict(handle_file(str(media / 'astronaut.png')), api_name='/predict')
    argv = ['--checkpoint', str(micro_checkpoints['detector']), str(media / 'astronaut.png'), '--quiet']
    want = predict.run(predict.get_args_parser().parse_args(argv))
    (face,) = want[0]['faces']
    assert photo['faces'] == [dict(box=face['box'], p_fake=pytest.approx(face['prob'], abs=1e-6),
                                   verdict='fake' if face['prob'] > 0.5 else 'real')]
    blank = client.predict(handle_file(str(media / 'blank.png')), api_name='/predict')
    assert blank == dict(faces=[], message='blank.png: no face found')
    text = client.predict(handle_file(str(media / 'notes.jpg')), api_name='/predict')
    assert text['faces'] == [] and text['message'].startswith('notes.jpg: cannot decode image')
    cut = client.predict(handle_file(str(media / 'truncated.png')), api_name='/predict')
    assert cut['faces'] == [] and cut['message'].startswith('truncated.png: cannot decode image')
    with ThreadPoolExecutor(2) as pool:                      # two users at once: the queue answers both
        both = list(pool.map(lambda p: Client(server, verbose=False).predict(handle_file(str(p)), api_name='/predict'),
                             [media / 'astronaut.png', media / 'blank.png']))
    assert both[0]['faces'] == photo['faces'] and both[1] == blank


def test_refusals_before_decoding(media, tmp_path):
    """Size, pixels, video length and file kind are checked before any decoding, each in one line naming the
    upload (the predictor is never reached)."""
    args = Namespace(max_upload_mb=50, max_megapixels=40, max_video_s=60, frames=4)
    a = app.Analyser(None, 0.5, args, tmp_path)
    assert a.problem(str(media / 'astronaut.png'), 'astronaut.png') is None
    assert a.problem(str(media / 'astronaut_clip.mp4'), 'clip.mp4') is None
    args.max_upload_mb = 0.01
    assert a.run(str(media / 'astronaut.png'), 'astronaut.png')['message'] == \
        'astronaut.png: 0.4 MB; this page takes files up to 0.01 MB'
    args.max_upload_mb, args.max_megapixels, args.max_video_s = 50, 0.2, 1
    assert a.problem(str(media / 'astronaut.png'), 'a.png') == \
        'a.png: 512 x 512 pixels; this page takes photos up to 0.2 megapixels'
    assert a.problem(str(media / 'astronaut_clip.mp4'), 'clip.mp4') == \
        'clip.mp4: 2 s long; this page takes videos up to 1 s'
    assert a.problem(str(media / 'notes.jpg'), 'notes.txt').startswith('notes.txt: not a photo or a video')
    assert a.api(str(media / 'astronaut_clip.mp4'))['message'] == \
        'astronaut_clip.mp4: /predict takes one image file; use the page for videos'


def test_without_a_detector_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(app, 'DEMO_DETECTOR', tmp_path / 'demo_output' / 'finetune' / 'checkpoint-best.pth')
    with pytest.raises(SystemExit) as e:
        app.main([])
    assert str(e.value).startswith('app.py: error: no detector: pass --checkpoint') and 'python demo.py' in str(e.value)
    assert app.get_args_parser().get_default('host') == '127.0.0.1'       # nothing is served beyond this machine
