import json
import tempfile
from dataclasses import replace
import wave

import pytest

from fastsync.batch import BatchJob, read_jobs, run_batch
from fastsync.cli import main
from fastsync.denoise import SamplingOptions
from fastsync.errors import InputError
from fastsync.output import OutputOptions
from fastsync.pipeline import JobReport


def _trim(src, dst, seconds):
    with wave.open(str(src)) as r:
        params = r.getparams()
        data = r.readframes(int(seconds * params.framerate))
    with wave.open(str(dst), "wb") as w:
        w.setparams(params)
        w.writeframes(data)


def test_read_jobs_csv_and_json_resolve_relative_paths(tmp_path):
    (tmp_path / "jobs.csv").write_text("video,audio,output\nv.mp4,a.wav,o.mp4\n")
    (tmp_path / "jobs.json").write_text(json.dumps([{"video": "v.mp4", "audio": "a.wav", "output": "o.mp4"}]))
    expected = [BatchJob(tmp_path / "v.mp4", tmp_path / "a.wav", tmp_path / "o.mp4")]
    assert read_jobs(tmp_path / "jobs.csv") == expected
    assert read_jobs(tmp_path / "jobs.json") == expected


def test_a_csv_saved_by_excel_reads_the_same(tmp_path):
    """Excel's "CSV UTF-8" starts with a byte-order mark, and ends lines with CRLF."""
    (tmp_path / "jobs.csv").write_bytes("\ufeffvideo,audio,output,seed\r\nv.mp4,a.wav,o.mp4,5\r\n".encode())
    assert read_jobs(tmp_path / "jobs.csv") == [
        BatchJob(tmp_path / "v.mp4", tmp_path / "a.wav", tmp_path / "o.mp4", settings=(("seed", 5),))]


@pytest.mark.parametrize("text", ["video,audio\nv.mp4,a.wav\n", "video,audio,output\n", "{not json"])
def test_bad_batch_files_name_the_file(tmp_path, text):
    path = tmp_path / ("jobs.json" if text.startswith("{") else "jobs.csv")
    path.write_text(text)
    with pytest.raises(InputError, match="jobs"):
        read_jobs(path)


def test_a_job_may_set_its_own_sampling_face_and_output(tmp_path):
    (tmp_path / "jobs.csv").write_text("video,audio,output,steps,guidance,seed,deepcache_interval,face_near,crf,"
                                       'output_audio\nv.mp4,a.wav,o.mp4,10,,7,0,"720,480",23,reference\n'
                                       "v.mp4,b.wav,p.mp4,,,,,,,\n")
    (tmp_path / "jobs.json").write_text(json.dumps([{"video": "v.mp4", "audio": "a.wav", "output": "o.mp4",
                                                     "steps": 10, "seed": 7, "deepcache_interval": 0,
                                                     "face_near": "720,480", "crf": 23, "output_audio": "reference"},
                                                    {"video": "v.mp4", "audio": "b.wav", "output": "p.mp4"}]))
    for name in ("jobs.csv", "jobs.json"):
        own, plain = read_jobs(tmp_path / name)
        engine = OutputOptions(audio="source", crf=30)
        assert own.encoding(engine) == OutputOptions(audio="reference", crf=23) and plain.encoding(engine) is None
        assert replace(own, encoding_values=(("crf", 12),)).encoding(engine) == OutputOptions("source", 12)
        assert own.settings == (("steps", 10), ("seed", 7), ("deepcache_interval", 0)) and plain.settings == ()
        assert own.face_near == (720, 480) and plain.face_near is None
        batch = SamplingOptions(steps=30, guidance=2.0)
        assert own.sampling(batch) == SamplingOptions(steps=10, guidance=2.0, seed=7, deepcache_interval=0)
        assert plain.sampling(batch) is batch and plain.sampling(None) is None
        assert own.sampling(None) == SamplingOptions(steps=10, seed=7, deepcache_interval=0)
    (tmp_path / "lossless.json").write_text(json.dumps([{"video": "v", "audio": "a", "output": "o", "crf": 0}]))
    assert read_jobs(tmp_path / "lossless.json")[0].encoding(None) == OutputOptions(crf=0)


@pytest.mark.parametrize(("cells", "message"), [
    ("steps\nten", "job 1: steps 'ten' is not an integer"),
    ("guidance\nnan", "job 1: guidance 'nan' is not a number"),
    ("steps\n0", "job 1: steps must be >= 1"),
    ("guidence\n2", "job 1 has unknown column\\(s\\) 'guidence'"),
    ("face_near\n720", "job 1: face_near '720' is not a point"),
    ("crf\nhigh", "job 1: crf 'high' is not an integer"),
    ("crf\n99", "job 1: --crf 99 is out of range"),
    ("output_audio\nloud", "job 1: unknown output audio 'loud'"),
])
def test_bad_sampling_cells_name_the_job_and_the_file(tmp_path, cells, message):
    header, value = cells.split("\n")
    path = tmp_path / "jobs.csv"
    path.write_text(f"video,audio,output,{header}\nv.mp4,a.wav,o.mp4,{value}\n")
    with pytest.raises(InputError, match=message) as caught:
        read_jobs(path)
    assert caught.value.path == path


class _FakeEngine:
    def __init__(self, fail_on):
        self.fail_on, self.calls, self.sampling, self.face_near, self.encoding = fail_on, [], [], [], []

    def run(self, video, audio, output, sampling=None, landmarks_cache=None, face_near=None, encoding=None):
        self.calls.append(output)
        self.sampling.append(sampling)
        self.face_near.append(face_near)
        self.encoding.append(encoding)
        if output.name == self.fail_on:
            raise InputError("broken", video)
        return JobReport(output, frames=len(self.calls), seconds=0.25, frames_without_face=1)


def test_a_failing_job_does_not_stop_the_others_and_existing_outputs_are_skipped(tmp_path):
    (tmp_path / "exists.mp4").write_bytes(b"x")
    jobs = [BatchJob(tmp_path / "v", tmp_path / "a", tmp_path / name) for name in ("bad.mp4", "exists.mp4", "ok.mp4")]
    lines = []
    engine = _FakeEngine(fail_on="bad.mp4")
    assert run_batch(engine, jobs, echo=lines.append) == (1, 1, 1)
    assert [p.name for p in engine.calls] == ["bad.mp4", "ok.mp4"]
    assert any("FAILED" in line and "broken" in line for line in lines)


def test_each_job_runs_with_its_own_sampling_and_face(tmp_path):
    batch = SamplingOptions(steps=30)
    jobs = [BatchJob(tmp_path / "v", tmp_path / "a", tmp_path / "own.mp4", settings=(("seed", 3),),
                     face_near=(1.0, 2.0), encoding_values=(("crf", 12),)),
            BatchJob(tmp_path / "v", tmp_path / "a", tmp_path / "plain.mp4")]
    engine = _FakeEngine(fail_on=None)
    assert run_batch(engine, jobs, sampling=batch, echo=lambda line: None) == (2, 0, 0)
    assert engine.sampling == [SamplingOptions(steps=30, seed=3), batch]
    assert engine.face_near == [(1.0, 2.0), None]
    assert engine.encoding == [OutputOptions(crf=12), None]  # a fake engine has no options: the defaults


def test_batch_cli_runs_two_jobs_with_one_engine(tmp_path, assets_dir):
    _trim(assets_dir / "demo1_audio.wav", tmp_path / "a.wav", 0.5)
    video = assets_dir / "demo1_video.mp4"
    (tmp_path / "jobs.json").write_text(json.dumps([
        {"video": str(video), "audio": "a.wav", "output": "one.mp4"},
        {"video": str(video), "audio": "a.wav", "output": "two.mp4"},
        {"video": str(video), "audio": "nope.wav", "output": "three.mp4"},
    ]))
    code = main(["batch", str(tmp_path / "jobs.json"), "--random-weights", "--model-size", "tiny", "--device", "cpu"])
    assert code == 1  # the third job's audio is missing
    assert (tmp_path / "one.mp4").stat().st_size > 0
    assert (tmp_path / "two.mp4").stat().st_size > 0
    assert not (tmp_path / "three.mp4").exists()


def test_jobs_on_one_video_detect_its_faces_once(tmp_path, assets_dir, monkeypatch):
    from job_clips import source_frames, trim_wav, write_clip

    from fastsync.face.dlib_backend import DlibLandmarker

    write_clip(tmp_path / "talk.mp4", source_frames(assets_dir / "demo1_video.mp4", 10, size=(270, 480)))
    trim_wav(assets_dir / "demo2_audio.wav", tmp_path / "de.wav", 0.6)  # 15 frames: the 10 looped
    trim_wav(assets_dir / "demo3_audio.wav", tmp_path / "fr.wav", 0.6)
    (tmp_path / "jobs.csv").write_text("video,audio,output\ntalk.mp4,de.wav,de.mp4\ntalk.mp4,fr.wav,fr.mp4\n")
    detected = []
    detect = DlibLandmarker.detect
    monkeypatch.setattr(DlibLandmarker, "detect", lambda self, frame: detected.append(1) or detect(self, frame))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    tiny = ["--random-weights", "--model-size", "tiny", "--device", "cpu", "--steps", "2", "--face-backend", "dlib"]

    assert main(["batch", str(tmp_path / "jobs.csv"), *tiny]) == 0
    assert len(detected) == 10  # each source frame once, for both jobs
    assert list((tmp_path / "tmp").iterdir()) == []  # the batch's own landmark folder is gone

    kept = tmp_path / "landmarks"
    for expected in (10, 0):  # a second batch finds the first one's landmarks
        detected.clear()
        assert main(["batch", str(tmp_path / "jobs.csv"), *tiny, "--overwrite", "--landmarks-dir", str(kept)]) == 0
        assert len(detected) == expected
    assert [p.name.split("-")[0] for p in kept.iterdir()] == ["talk"]


def test_a_landmarks_dir_that_cannot_be_made_fails_before_the_models_load(tmp_path, capsys, monkeypatch):
    from fastsync import api

    monkeypatch.setattr(api.LipSync, "from_options", lambda options: pytest.fail("the models were loaded"))
    (tmp_path / "jobs.csv").write_text("video,audio,output\nv.mp4,a.wav,o.mp4\n")
    (tmp_path / "taken").write_text("a file, not a folder")
    code = main(["batch", str(tmp_path / "jobs.csv"), "--landmarks-dir", str(tmp_path / "taken"),
                 "--random-weights", "--model-size", "tiny", "--device", "cpu"])
    assert code == 2
    assert f"{tmp_path / 'taken'}: cannot create the landmarks folder" in capsys.readouterr().err


def test_batch_face_near_is_the_default_of_jobs_without_their_own(tmp_path, monkeypatch):
    from fastsync import api, batch

    given = []
    monkeypatch.setattr(api.LipSync, "from_options", lambda options: "engine")
    monkeypatch.setattr(batch, "run_batch", lambda engine, jobs, **options: given.extend(jobs) or (2, 0, 0))
    (tmp_path / "jobs.csv").write_text('video,audio,output,face_near\nv.mp4,a.wav,o.mp4,"1,2"\nv.mp4,b.wav,p.mp4,\n')
    tiny = ["--random-weights", "--model-size", "tiny", "--device", "cpu"]
    assert main(["batch", str(tmp_path / "jobs.csv"), *tiny, "--face-near", "30,40"]) == 0
    assert [job.face_near for job in given] == [(1.0, 2.0), (30.0, 40.0)]
    given.clear()
    assert main(["batch", str(tmp_path / "jobs.csv"), *tiny]) == 0
    assert [job.face_near for job in given] == [(1.0, 2.0), None]
    monkeypatch.setattr(api.LipSync, "from_options", lambda options: pytest.fail("the models were loaded"))
    assert main(["batch", str(tmp_path / "jobs.csv"), *tiny, "--face-near=-1,2"]) == 2


# -- --report: every job's outcome in a file ------------------------------------------------------


class _ReadingEngine(_FakeEngine):
    """Reads the report file as each job starts: what a script watching it would see."""

    def __init__(self, report_path, fail_on=None):
        super().__init__(fail_on)
        self.report_path, self.seen = report_path, []

    def run(self, video, audio, output, **kwargs):
        self.seen.append([row["status"] for row in json.loads(self.report_path.read_text())["jobs"]])
        return super().run(video, audio, output, **kwargs)


def test_the_report_keeps_each_outcome_and_is_rewritten_after_every_job(tmp_path):
    from fastsync.batch_report import BatchReport

    (tmp_path / "exists.mp4").write_bytes(b"x")
    jobs = [BatchJob(tmp_path / "v", tmp_path / "a", tmp_path / name)
            for name in ("ok1.mp4", "bad.mp4", "exists.mp4", "ok2.mp4")]
    path = tmp_path / "report.json"
    engine = _ReadingEngine(path, fail_on="bad.mp4")
    assert run_batch(engine, jobs, echo=lambda line: None, report=BatchReport(jobs, path, tmp_path / "jobs.csv")) \
        == (2, 1, 1)
    assert engine.seen == [["pending"] * 4, ["done", "pending", "pending", "pending"],
                           ["done", "failed", "skipped", "pending"]]
    saved = json.loads(path.read_text())
    assert saved["counts"] == {"done": 2, "skipped": 1, "failed": 1, "pending": 0}
    assert saved["jobs_file"] == str(tmp_path / "jobs.csv")
    rows = saved["jobs"]
    assert [row["status"] for row in rows] == ["done", "failed", "skipped", "done"]
    assert [row["output"] for row in rows] == [str(job.output) for job in jobs]
    assert (rows[0]["frames"], rows[0]["seconds"], rows[0]["frames_without_face"]) == (1, 0.25, 1)
    assert rows[3]["frames"] == 3  # the fake's frame count is its call number
    assert "broken" in rows[1]["error"] and "frames" not in rows[1]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no partial file left


def test_a_csv_report_has_one_line_per_job(tmp_path):
    import csv

    from fastsync.batch_report import COLUMNS, BatchReport

    jobs = [BatchJob(tmp_path / "v", tmp_path / "a", tmp_path / name) for name in ("bad.mp4", "ok.mp4")]
    path = tmp_path / "report.csv"
    run_batch(_FakeEngine(fail_on="bad.mp4"), jobs, echo=lambda line: None, report=BatchReport(jobs, path))
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == COLUMNS
    assert [(row["number"], row["status"], row["frames"]) for row in rows] == [("1", "failed", ""), ("2", "done", "2")]
    assert "broken" in rows[0]["error"]


@pytest.mark.parametrize(("name", "message"), [("report.txt", "suffix '.txt'"), ("missing/report.json", "does not exist")])
def test_a_bad_report_path_fails_before_the_models_load(tmp_path, capsys, monkeypatch, name, message):
    from fastsync import api

    monkeypatch.setattr(api.LipSync, "from_options", lambda options: pytest.fail("the models were loaded"))
    (tmp_path / "jobs.csv").write_text("video,audio,output\nv.mp4,a.wav,o.mp4\n")
    code = main(["batch", str(tmp_path / "jobs.csv"), "--report", str(tmp_path / name),
                 "--random-weights", "--model-size", "tiny", "--device", "cpu"])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and name.split("/")[-1] in err


def test_batch_cli_writes_the_report(tmp_path, monkeypatch):
    from fastsync import api

    monkeypatch.setattr(api.LipSync, "from_options", lambda options: _FakeEngine(fail_on="o2.mp4"))
    (tmp_path / "jobs.csv").write_text("video,audio,output\nv.mp4,a.wav,o1.mp4\nv.mp4,a.wav,o2.mp4\n")
    code = main(["batch", str(tmp_path / "jobs.csv"), "--report", str(tmp_path / "report.json"),
                 "--random-weights", "--model-size", "tiny", "--device", "cpu"])
    assert code == 1
    rows = json.loads((tmp_path / "report.json").read_text())["jobs"]
    assert [(row["output"], row["status"]) for row in rows] == [(str(tmp_path / "o1.mp4"), "done"),
                                                                 (str(tmp_path / "o2.mp4"), "failed")]
