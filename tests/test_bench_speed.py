"""Issue 21.4-5 at tiny size: int8 calibration runs one image at a time (its session's memory grows with the batch:
the peak of a whole training run at 512 px); bench/speed.py's RSS breakdown and roofline case run and say
something true. The numbers themselves come from bench/speed.py, never from here."""

import mmap
import time

import numpy as np
import pytest
import torch
from conftest import bench_module

from zoo.model import BoneClassifier


@pytest.fixture(scope="module")
def speed():
    """bench/speed.py as a module."""
    return bench_module("speed")


def _member(tmp_path):
    from zoo.cli import main

    torch.manual_seed(0)
    member = BoneClassifier("resnet10t", img_size=32, head_hidden=[8]).save_member(tmp_path / "m")
    assert main(["export", str(member), "--onnx"]) == 0
    return member


def test_calibration_feeds_one_image_per_run_with_the_same_ranges(tmp_path, monkeypatch):
    import onnx
    from onnxruntime.quantization import calibrate

    from zoo.onnx import CALIBRATION_BATCH, quantize_int8

    member = _member(tmp_path)
    images = np.random.default_rng(0).integers(0, 256, (6, 1, 32, 32), dtype=np.uint8)
    seen, collect = [], calibrate.MinMaxCalibrater.collect_data

    def recording(self, reader):
        class Spy:
            def get_next(self):
                item = reader.get_next()
                if item:
                    seen.append(item["image"].shape[0])
                return item

        return collect(self, Spy())

    monkeypatch.setattr(calibrate.MinMaxCalibrater, "collect_data", recording)
    quantize_int8(member / "model.onnx", tmp_path / "a.onnx", [images[:4], images[4:]])  # batches of 4 and 2
    assert seen == [CALIBRATION_BATCH] * 6 and CALIBRATION_BATCH == 1
    quantize_int8(member / "model.onnx", tmp_path / "b.onnx", [images[i:i + 1] for i in range(6)])

    def scales(path):  # every quantisation parameter of the graph
        g = onnx.load(str(path)).graph
        return {i.name: onnx.numpy_helper.to_array(i) for i in g.initializer
                if i.name.endswith(("_scale", "_zero_point"))}

    a, b = scales(tmp_path / "a.onnx"), scales(tmp_path / "b.onnx")
    assert a.keys() == b.keys() and len(a) > 10
    assert all(np.array_equal(a[k], b[k]) for k in a)  # min/max ranges do not depend on the batching


def test_rss_sampler_attributes_the_peak_to_the_phase_that_made_it(speed):
    class Work:
        @staticmethod
        def small():
            return bytearray(1 << 20)

        @staticmethod
        def big():
            # a fresh anonymous mapping, touched: new resident pages whatever the allocator kept from earlier tests
            # (a bytearray can reuse freed pages that are still resident, and then RSS does not move)
            block = mmap.mmap(-1, 300 << 20)
            for i in range(0, len(block), 4096):
                block[i] = 1
            time.sleep(0.2)  # held for a while: the sampler (a thread, every 5 ms) must get a turn on a loaded machine
            n = len(block)
            block.close()
            return n

        @staticmethod
        def outer():
            Work.small()
            return Work.big()

    sampler = speed.RssSampler()
    for attr in ("small", "big", "outer"):
        sampler.wrap(Work, attr, attr)
    Work.outer()
    rows = {r["phase"]: r for r in sampler.table()}
    assert list(rows)[1:] == ["outer", ". small", ". big"]  # in order of first entry, nested under outer
    gb = 2**30
    assert rows[". big"]["peak_gb"] - rows[". big"]["rss_start_gb"] >= 0.25
    assert rows[". small"]["peak_gb"] - rows[". small"]["rss_start_gb"] < 0.1
    assert rows["outer"]["peak_gb"] >= rows[". big"]["peak_gb"] - 1 / gb


def test_roofline_case_at_tiny_size(speed):
    import pandas as pd

    res = speed.roofline({"n": 128, "seconds": 0.05, "backbone": "resnet10t", "size": 32})
    peaks, flop = res["peaks_gops"], res["gflop_per_image"]
    assert {"torch fp32", "torch bf16", "onnxruntime fp32", "onnxruntime int8"} <= set(peaks)
    assert all(v > 0 for v in peaks.values())
    assert 0 < flop["inference"] < 1 and flop["training"] == pytest.approx(3 * flop["inference"])
    rows = pd.DataFrame([{"group": "inference", "engine": "onnxruntime int8", "images_per_s": 10.0},
                         {"group": "training", "engine": "torch fp32", "images_per_s": 1.0}])
    out = speed.limit_columns(rows, res)
    assert out["limit_images_s"].tolist() == pytest.approx([peaks["onnxruntime int8"] / flop["inference"],
                                                            peaks["torch fp32"] / flop["training"]])
    assert out["of_limit"].tolist() == pytest.approx((out["images_per_s"] / out["limit_images_s"]).tolist())


def test_gemm_graphs_compute_the_product(speed, tmp_path):
    from zoo.onnx import session

    x = np.random.default_rng(1).standard_normal((64, 64)).astype(np.float32)
    fp32 = session(speed.gemm_graph(tmp_path / "f.onnx", 64, int8=False)).run(None, {"x": x})[0]
    int8 = session(speed.gemm_graph(tmp_path / "q.onnx", 64, int8=True)).run(None, {"x": x})[0]
    assert fp32.shape == (64, 64) and np.corrcoef(fp32.ravel(), int8.ravel())[0, 1] > 0.95


def test_a_case_whose_command_refused_is_no_row(speed, tmp_path):
    """A child whose command returned non-zero (e.g. predict.py refusing a leftover .parts folder: it prints
    {"rc": 2} and exits 0) stops the bench instead of being recorded as a (fast) measurement."""
    script = tmp_path / "case.py"
    script.write_text("import json\nprint(json.dumps({'rc': 2, 'images': 1, 'loop_s': 0.1}))\n")
    with pytest.raises(RuntimeError, match="returned 2"):
        speed.child("zoo_predict", {}, tmp_path, script=script)
    script.write_text("import json\nprint(json.dumps({'rc': 0, 'images': 1, 'loop_s': 0.1}))\n")
    assert speed.child("zoo_predict", {}, tmp_path, script=script)["rc"] == 0
