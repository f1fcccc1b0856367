"""alfo_torchreid.utils.download against a local HTTP server on 127.0.0.1."""
import hashlib
import os

import pytest
from http_server import closed_port_url, serve

from alfo_torchreid.utils.download import download, sha256_of
from alfo_torchreid.utils.errors import DownloadError

PAYLOAD = bytes(range(256)) * 1000  # 256,000 bytes: several chunks
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture(scope='module')
def server():
    """/file: the payload; /truncated: announces the payload, sends half and
    closes; /unsized: the payload without Content-Length; anything else: 404."""
    with serve({'/file': PAYLOAD, '/truncated': PAYLOAD, '/unsized': PAYLOAD},
               truncated={'/truncated'}, unsized={'/unsized'}) as url:
        yield url


def test_downloads_verified_file_atomically(server, tmp_path):
    dest = tmp_path / 'sub' / 'weights.pth'
    assert download(f'{server}/file', dest, sha256=PAYLOAD_SHA.upper(), progress=False) == str(dest)
    assert dest.read_bytes() == PAYLOAD
    assert sha256_of(dest) == PAYLOAD_SHA
    assert os.listdir(dest.parent) == ['weights.pth']  # no temporary file left
    umask = os.umask(0)
    os.umask(umask)
    assert dest.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would create it


def test_sha_mismatch_leaves_no_file(server, tmp_path):
    dest = tmp_path / 'a.mat'
    message = rf'sha256 {PAYLOAD_SHA}, expected 0+; not saved to "{dest}"'
    with pytest.raises(DownloadError, match=message):
        download(f'{server}/file', dest, sha256='0' * 64, progress=False)
    assert os.listdir(tmp_path) == []


def test_failed_download_keeps_the_previous_file(server, tmp_path):
    dest = tmp_path / 'a.mat'
    dest.write_bytes(b'previous')
    with pytest.raises(DownloadError, match='sha256'):
        download(f'{server}/file', dest, sha256='0' * 64, progress=False)
    with pytest.raises(DownloadError, match='interrupted'):
        download(f'{server}/truncated', dest, progress=False)
    assert dest.read_bytes() == b'previous'
    assert os.listdir(tmp_path) == ['a.mat']


def test_a_failed_download_to_a_new_path_leaves_no_folder(server, tmp_path):
    (tmp_path / 'kept').mkdir()
    for dest in (tmp_path / 'a' / 'b' / 'c.mat', tmp_path / 'kept' / 'new' / 'c.mat'):
        with pytest.raises(DownloadError, match='interrupted'):
            download(f'{server}/truncated', dest, progress=False)
    assert os.listdir(tmp_path) == ['kept'] and os.listdir(tmp_path / 'kept') == []


def test_interrupted_download_leaves_no_file(server, tmp_path):
    dest = tmp_path / 'a.mat'
    message = f'interrupted after {len(PAYLOAD) // 2} of {len(PAYLOAD)} bytes'
    with pytest.raises(DownloadError, match=message):
        download(f'{server}/truncated', dest, progress=False)
    assert os.listdir(tmp_path) == []


def test_progress_callback_sees_every_byte(server, tmp_path):
    calls = []
    download(f'{server}/file', tmp_path / 'a', progress=lambda r, t: calls.append((r, t)))
    received = [r for r, _ in calls]
    assert len(calls) >= 2 and received == sorted(received)
    assert {t for _, t in calls} == {len(PAYLOAD)}
    assert calls[-1] == (len(PAYLOAD), len(PAYLOAD))


def test_progress_without_content_length_ends_with_the_total(server, tmp_path):
    calls = []
    download(f'{server}/unsized', tmp_path / 'a', sha256=PAYLOAD_SHA,
             progress=lambda r, t: calls.append((r, t)))
    assert calls[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert all(t is None for _, t in calls[:-1])


def test_default_progress_bar_draws_on_stderr(server, tmp_path, capsys):
    download(f'{server}/file', tmp_path / 'model.pth')
    err = capsys.readouterr().err
    assert 'model.pth' in err and '100%' in err and err.endswith('\n')
    # 64 KiB chunks of 250 KiB: redrawn at 25, 51, 76 and 100 %.
    assert err.count('\r') == 4 and ' 25% 64.0/250.0 KiB' in err


def test_offline_says_where_to_put_the_file(tmp_path):
    url = closed_port_url('file')
    dest = tmp_path / 'x.mat'
    with pytest.raises(DownloadError, match=rf'could not download {url} .*put it at "{dest}"'):
        download(url, dest, progress=False)
    assert os.listdir(tmp_path) == []


def test_http_error_names_the_status(server, tmp_path):
    with pytest.raises(DownloadError, match=f'{server}/missing answered HTTP 404'):
        download(f'{server}/missing', tmp_path / 'x', progress=False)
    assert os.listdir(tmp_path) == []


def test_unwritable_destination(server, tmp_path):
    (tmp_path / 'dir').mkdir()
    with pytest.raises(DownloadError, match='cannot save the download'):
        download(f'{server}/file', tmp_path / 'dir', progress=False)
    assert os.listdir(tmp_path) == ['dir']
